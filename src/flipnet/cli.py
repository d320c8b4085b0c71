"""The ``flipnet`` command: prepare | degrade | restore | export | train | sample | eval | bench |
serve | demo | pseudo-targets | finetune.

Every failure flipnet anticipates (a bad file, missing weights, a bad option) is printed as one
``error:`` line with exit status 2; no traceback. Heavy modules are imported inside commands, and
the options of config-built commands are made on first use (``ConfigCommand``), so ``flipnet
--help`` and ``flipnet restore --help`` import no torch (``tests/test_cli_options.py`` checks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from flipnet.cli_options import ConfigCommand, print_config, resolve_config
from flipnet.errors import FlipnetError

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


def invocation() -> str:
    """The command line as a user would type it (``flipnet train ...``), for model cards: the
    entry point's absolute path (a venv's ``.../bin/flipnet``) says nothing on another machine."""
    return " ".join(["flipnet", *sys.argv[1:]])


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="flipnet")
def cli() -> None:
    """flipnet: blind face restoration with diffusion priors (FLIPNET, unsupervised fine-tuning)."""


@cli.command()
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--size", default=128, help="Crop size in pixels (64 to 1024).")
@click.option("--template", type=click.Choice(["flipnet", "ffhq"]), default="flipnet",
              help="5-point template: flipnet (derived from UTKFace) or ffhq (public checkpoints).")
@click.option("--detector", type=click.Choice(["hog", "cnn"]), default="hog", help="dlib detector.")
@click.option("--min-sharpness", type=float, default=None,
              help="Drop crops below this sharpness (variance of Laplacian); 0 keeps all. "
                   "[default: the documented UTKFace-derived threshold]")
@click.option("--pad", type=float, default=0.0,
              help="Border (fraction of the long side) added before detection; ~0.25 for tight "
                   "crops such as UTKFace.")
@click.option("--limit", type=int, default=None, help="Process only the first N files.")
@click.option("--workers", type=int, default=1, help="Worker processes.")
def prepare(src, dst, size, template, detector, min_sharpness, pad, limit, workers) -> None:
    """Turn a folder of raw photos into aligned face crops for training and testing."""
    from flipnet.pipelines.prepare import DEFAULT_MIN_SHARPNESS, prepare_folder

    report = prepare_folder(src, dst, size=size, template=template, detector=detector,
                            min_sharpness=DEFAULT_MIN_SHARPNESS if min_sharpness is None
                            else min_sharpness, pad=pad, limit=limit, workers=workers)
    click.echo(report.summary() if hasattr(report, "summary") else report)


@cli.command(cls=ConfigCommand, config="flipnet.pipelines.degrade:DegradeConfig")
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--method", type=click.Choice(["naive", "flipnet"]), default="naive",
              help="naive = the synthetic pipeline (--preset); flipnet = learned degradation mode.")
def degrade(src, dst, method, dry_run, **kwargs) -> None:
    """Turn HQ faces into LQ faces and write the sampled parameters as params.json."""
    from flipnet.pipelines.degrade import DegradeConfig, degrade_folder

    cfg = resolve_config(DegradeConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    if method == "flipnet":
        from flipnet.pipelines.degrade import flipnet_degrade_folder

        click.echo(flipnet_degrade_folder(src, dst, cfg).summary())
        return
    from flipnet.degradations.presets import get_preset, preset_for_size

    # the published ranges are for 512 px faces: scale blur and r with the face size
    preset = preset_for_size(cfg.preset, cfg.size) if cfg.size else get_preset(cfg.preset)
    report = degrade_folder(src, dst, preset=preset, seed=cfg.seed, size=cfg.size,
                            batch_size=cfg.batch_size, progress=cfg.progress)
    click.echo(report.summary() if hasattr(report, "summary") else report)


@cli.command(name="eval", cls=ConfigCommand, config="flipnet.pipelines.evaluate:EvalConfig")
def eval_(dry_run, **kwargs) -> None:
    """Score restored faces: no-reference, full-reference (--gt) and distribution (--ref)."""
    from rich.console import Console
    from rich.table import Table

    from flipnet.pipelines.evaluate import EvalConfig, evaluate_folders, format_value

    cfg = resolve_config(EvalConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    if not cfg.pred:
        raise click.UsageError("--pred is required")
    result = evaluate_folders(cfg)
    table = Table(title=f"{cfg.pred} ({result['count']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result["metrics"].items():
        table.add_row(k, format_value(v))
    Console().print(table)
    if not cfg.out:
        click.echo(json.dumps(result["metrics"]))


BG_UPSAMPLERS = ("none", "lanczos")  # both resize the background without a model (see --help)
EXPLICIT_ONLY = ("steps", "seed", "fidelity", "backend")  # passed to make_method only when given


def _bg_upsampler(ctx, param, value: str) -> str:
    """GFPGAN's ``--bg_upsampler``: accept the model-free choices, refuse the rest by name."""
    value = value.lower()
    if value not in BG_UPSAMPLERS:
        raise click.BadParameter(
            f"{value!r} is not available (flipnet ships no background model such as "
            "Real-ESRGAN); use none or lanczos: both resize the background by -s/--upscale with "
            "Lanczos, as GFPGAN and CodeFormer do without a background model",
            ctx=ctx, param=param)
    return value


def _name_suffix(ctx, param, value: str | None) -> str | None:
    """``--suffix`` becomes part of a file name: refuse path separators."""
    if value is not None and ("/" in value or "\\" in value):
        raise click.BadParameter(f"{value!r}: a name suffix cannot contain / or \\",
                                 ctx=ctx, param=param)
    return value


@cli.command()
@click.argument("inputs", nargs=-1, type=click.Path(exists=True))
@click.option("-i", "--input", "--input_path", "more_inputs", multiple=True,
              type=click.Path(exists=True),
              help="A photo, video or folder to restore; repeatable, added to INPUTS "
                   "(GFPGAN -i/--input, CodeFormer -i/--input_path).")
@click.option("-o", "--output", "--output_path", "--out", "out", type=click.Path(), required=True,
              help="Output folder (GFPGAN -o/--output, CodeFormer -o/--output_path).")
@click.option("--method", default="restorer",
              type=click.Choice(["restorer", "finetuned", "prior", "flipnet", "bicubic", "classical",
                                 "input"]),
              help="Restoration method.")
@click.option("--weights", default=None, help="Weights folder (default: the shipped one).")
@click.option("--backend", default="torch", type=click.Choice(["torch", "onnx"]),
              help="Run the network with torch, or with onnxruntime (restorer methods; needs "
                   "`pip install onnxruntime onnx`): uses WEIGHTS/model.onnx when it matches the "
                   "weights, else exports once into $FLIPNET_CACHE (~/.cache/flipnet/onnx).")
@click.option("-s", "--upscale", default=1.0,
              help="Scale the whole photo by this factor, faces pasted at the new size "
                   "(GFPGAN/CodeFormer -s/--upscale; their default is 2).")
@click.option("--bg_upsampler", "--bg-upsampler", "bg_upsampler", default="lanczos",
              metavar="[none|lanczos]", callback=_bg_upsampler,
              help="How -s/--upscale enlarges the background: none or lanczos, the same here: a "
                   "Lanczos resize (what GFPGAN/CodeFormer do with --bg_upsampler none); "
                   "realesrgan is not available.")
@click.option("--aligned", "--has_aligned", "aligned", is_flag=True,
              help="Inputs are already aligned face crops, see --framing (GFPGAN --aligned, "
                   "CodeFormer --has_aligned).")
@click.option("--framing", default="ffhq", type=click.Choice(["ffhq", "flipnet"]),
              help="--aligned crops are: ffhq (the field's 512 px FFHQ-aligned crops, output in "
                   "the same framing) or flipnet (flipnet's own tight UTKFace-style crops).")
@click.option("--keep-detail/--no-keep-detail", default=True,
              help="Paste a face only where restoration changed it, so a sharp face keeps its "
                   "own detail (see docs/BENCHMARKS.md, 'Do no harm').")
@click.option("--only-center-face", "--only_center_face", "only_center_face", is_flag=True,
              help="Restore only the face nearest the centre (GFPGAN/CodeFormer "
                   "--only_center_face).")
@click.option("-w", "--fidelity", "--fidelity_weight", "fidelity", default=0.5,
              type=click.FloatRange(0.0, 1.0),
              help="0 = more detail (quality) ... 1 = closer to the input (fidelity), as "
                   "CodeFormer's -w/--fidelity_weight; diffusion methods (prior, flipnet) only, "
                   "the others refuse it.")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Sampling steps; diffusion methods (prior, flipnet) only, the others refuse "
                   "it. [default: the method's own: 50 for prior and flipnet]")
@click.option("--seed", default=0, help="Seed of the sampling noise; diffusion methods (prior, "
              "flipnet) only, the others refuse it.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]),
              help="Device.")
@click.option("--batch-size", default=16, help="Faces per forward pass.")
@click.option("--suffix", default=None, callback=_name_suffix,
              help="Appended to restored file names: restored_imgs/NAME_SUFFIX.EXT, "
                   "restored_faces/NAME_00_SUFFIX.png (GFPGAN/CodeFormer --suffix). "
                   "[default: none]")
@click.option("--ext", default="auto",
              help="Extension of restored_imgs/: auto (the input's), png, jpg... (GFPGAN --ext).")
@click.option("--detector", default="hog", type=click.Choice(["hog", "cnn"]), help="Face detector.")
@click.option("--smooth/--no-smooth", default=True,
              help="Videos: smooth each face's landmarks over time (One-Euro filter), so the "
                   "restored face does not flicker with alignment jitter.")
@click.option("--detect-every", default=5, type=click.IntRange(min=1),
              help="Videos: run the face detector every K frames and track faces by optical "
                   "flow in between (1 = detect every frame).")
@click.option("--temporal", default=0.6, type=click.FloatRange(0.0, 0.95),
              help="Videos: weight of the previous frame's restored face, blended in where the "
                   "input did not change (0 = off).")
@click.pass_context
def restore(ctx, inputs, more_inputs, out, method, weights, backend, upscale, bg_upsampler,
            aligned, framing, keep_detail, only_center_face, fidelity, steps, seed, device,
            batch_size, suffix, ext, detector, smooth, detect_every, temporal) -> None:
    """Restore the faces in photos and videos (files or folders) into GFPGAN's output layout.

    Options a method does not use (--steps, --seed, --fidelity, --backend) are refused, not
    ignored. Videos (mp4 mov mkv avi webm m4v) go to OUT/restored_videos/NAME.mp4 with their
    audio. Exit status: 0 all done, 1 some inputs skipped (each named on stderr), 2 error.
    Under `accelerate launch --num_processes N` the inputs are split across the processes.
    """
    from click.core import ParameterSource

    from flipnet.faces.keep_detail import KeepDetailConfig
    from flipnet.io import list_images
    from flipnet.pipelines.methods import make_method
    from flipnet.pipelines.restore import distributed_state, restore_files
    from flipnet.pipelines.video import is_video, list_videos

    inputs = (*inputs, *more_inputs)
    if not inputs:
        raise click.UsageError("no input: name photos, videos or folders (or use -i/--input)")
    files = sorted({Path(f) for src in inputs for f in (
        [Path(src)] if Path(src).is_file() else list_images(src) + list_videos(src))})
    if not files:
        raise FlipnetError(f"no images or videos found in {', '.join(inputs)}")
    state = distributed_state()
    if state is not None and device == "auto":
        device = str(state.device)  # one device per process
    # a method refuses an option it does not use, so pass only what the user typed
    chosen = {"steps": steps, "seed": seed, "fidelity": fidelity, "backend": backend}
    given = {k: chosen[k] for k in EXPLICIT_ONLY
             if ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT)}
    m = make_method(method, weights, device=device, batch_size=batch_size, **given)
    settings = {"method": method, "weights": weights, "backend": backend, "upscale": upscale,
                "bg_upsampler": bg_upsampler, "aligned": aligned, "framing": framing,
                "keep_detail": keep_detail, "only_center_face": only_center_face,
                "fidelity": fidelity, "steps": steps, "seed": seed, "device": device,
                "batch_size": batch_size, "suffix": suffix, "ext": ext, "detector": detector}
    video_options = {"smooth": smooth, "detect_every": detect_every, "temporal": temporal}
    report = restore_files(files, Path(out), m, ext=ext, suffix=suffix,
                           settings={**settings, **video_options}, upscale=upscale,
                           aligned=aligned, framing=framing,
                           keep_detail=KeepDetailConfig() if keep_detail else None,
                           only_center_face=only_center_face, detector=detector,
                           video_options=video_options)
    if state is not None and not state.is_main_process:
        return
    faces = sum(v.get("faces", 0) for v in report["images"].values())
    videos = sum(is_video(p) for p in report["images"])
    click.echo(f"{report['done']} files ({videos} videos), {faces} faces restored, "
               f"{len(report['skipped_files'])} skipped, {report['seconds']} s -> {out}")
    for path, why in report["skipped_files"].items():
        click.echo(f"error: {path}: {why}", err=True)
    if report["skipped_files"]:
        sys.exit(1)


@cli.group()
def train() -> None:
    """Train a component (Accelerate: CPU, one GPU, or `accelerate launch` for many)."""


@train.command(name="prior", cls=ConfigCommand, config="flipnet.training.prior:PriorTrainConfig")
def train_prior_cmd(dry_run, **kwargs) -> None:
    """Train the unconditional face diffusion prior; exports EMA weights + model card."""
    from flipnet.training.prior import PriorTrainConfig, train_prior

    cfg = resolve_config(PriorTrainConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    click.echo(f"prior exported to {train_prior(cfg)}")


@train.command(name="embedder", cls=ConfigCommand,
               config="flipnet.training.face_embedding:EmbedderTrainConfig")
def train_embedder_cmd(dry_run, **kwargs) -> None:
    """Train FLIPNET's face embedder (stage I reconstruction, stage II LQ->HQ token alignment)."""
    from flipnet.training.face_embedding import EmbedderTrainConfig, train_face_embedding

    cfg = resolve_config(EmbedderTrainConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    click.echo(f"embedder exported to {train_face_embedding(cfg)}")


@train.command(name="flipnet", cls=ConfigCommand,
               config="flipnet.training.flipnet:FlipNetTrainConfig")
def train_flipnet_cmd(dry_run, **kwargs) -> None:
    """Train FLIPNET adapters on a frozen prior (restoration + degradation mode every step)."""
    from flipnet.training.flipnet import FlipNetTrainConfig, train_flipnet

    cfg = resolve_config(FlipNetTrainConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    click.echo(f"FLIPNET exported to {train_flipnet(cfg)}")


@train.command(name="restorer", cls=ConfigCommand,
               config="flipnet.training.restorer:RestorerTrainConfig")
def train_restorer_cmd(dry_run, **kwargs) -> None:
    """Train the fast feed-forward restorer on synthetic pairs (or --pairs-dir pairs)."""
    from flipnet.training.restorer import RestorerTrainConfig, train_restorer

    cfg = resolve_config(RestorerTrainConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    click.echo(f"restorer exported to {train_restorer(cfg, command=invocation())}")


@train.command(name="autoencoder", cls=ConfigCommand,
               config="flipnet.training.autoencoder:AutoencoderTrainConfig")
def train_autoencoder_cmd(dry_run, **kwargs) -> None:
    """Train the face autoencoder of a latent prior (L1 + FFT + KL + GAN); exports EMA weights."""
    from flipnet.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

    cfg = resolve_config(AutoencoderTrainConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    click.echo(f"autoencoder exported to {train_autoencoder(cfg, command=invocation())}")


@train.command(name="face-locator", cls=ConfigCommand,
               config="flipnet.training.face_locator:FaceLocatorTrainConfig")
def train_face_locator_cmd(dry_run, **kwargs) -> None:
    """Train the learned face locator, the detection fallback for heavily degraded faces."""
    from flipnet.training.face_locator import FaceLocatorTrainConfig, train_face_locator

    cfg = resolve_config(FaceLocatorTrainConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    click.echo(f"face locator exported to {train_face_locator(cfg, command=invocation())}")


@cli.command(name="pseudo-targets", cls=ConfigCommand,
             config="flipnet.pipelines.pseudo_targets:PseudoTargetConfig")
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
def pseudo_targets(src, dst, dry_run, **kwargs) -> None:
    """Pseudo targets for unlabeled LQ faces: restore, diffuse to t0, guided sampling back."""
    from flipnet.pipelines.pseudo_targets import PseudoTargetConfig, make_pseudo_targets

    cfg = resolve_config(PseudoTargetConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    r = make_pseudo_targets(src, dst, cfg)
    click.echo(f"{r['count']} pseudo targets ({r['new']} new, {len(r['skipped'])} skipped), "
               f"{r['seconds_per_target']} s each -> {dst}")


@cli.command(cls=ConfigCommand, config="flipnet.training.finetune:FinetuneConfig")
def finetune(dry_run, **kwargs) -> None:
    """Fine-tune a restorer on unlabeled real LQ faces with diffusion-prior pseudo targets."""
    from flipnet.api import finetune as run
    from flipnet.training.finetune import FinetuneConfig

    cfg = resolve_config(FinetuneConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    click.echo(f"fine-tuned restorer exported to {run(cfg)}")


@cli.command()
@click.option("--weights", default=None,
              help="Prior weights folder or shipped name [default: the default prior, "
                   "prior-latent-128].")
@click.option("--n", default=64, help="Number of faces.")
@click.option("--steps", default=50, help="Sampling steps (respaced).")
@click.option("--sampler", default="ddim", type=click.Choice(["ddim", "ddpm", "dpmpp_2m"]),
              help="Sampler.")
@click.option("--eta", default=0.0, help="DDIM eta.")
@click.option("--seed", default=0, help="Seed; sample i depends only on (seed, i).")
@click.option("--batch-size", default=16, help="Faces per batch.")
@click.option("--device", default="auto", help="auto | cpu | cuda | mps.")
@click.option("-o", "--out", default="samples.png", help="Grid PNG to write.")
@click.option("--individual", type=click.Path(file_okay=False), default=None,
              help="Also write each face as DIR/NNNNN.png (NNNNN = sample index).")
def sample(weights, n, steps, sampler, eta, seed, batch_size, device, out, individual) -> None:
    """Sample faces from the diffusion prior (pixel or latent) and write a grid PNG."""
    from flipnet.device import resolve_device
    from flipnet.pipelines.sample import check_sample_folder, sample_prior, save_samples
    from flipnet.viz import save_grid
    from flipnet.weights import DEFAULT_WEIGHTS, resolve_weights

    folder = resolve_weights(weights or DEFAULT_WEIGHTS["prior"])
    if individual:
        check_sample_folder(individual, folder)
    images = sample_prior(folder, n=n, steps=steps, sampler=sampler, eta=eta, seed=seed,
                          batch_size=batch_size, device=str(resolve_device(device)))
    click.echo(f"wrote {save_grid(out, images)}")
    if individual:
        files = save_samples(individual, images, weights=folder)
        click.echo(f"wrote {len(files)} faces to {individual}")


@cli.command()
@click.option("--format", "fmt", default="onnx", type=click.Choice(["onnx"]),
              help="File format (ONNX: dynamic batch, fixed face size, plus a JSON sidecar).")
@click.option("--weights", default="restorer-128",
              help="Restorer weights folder or shipped name (restorer-128, "
                   "restorer-128-finetuned).")
@click.option("-o", "--output", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="File to write, e.g. restorer-128.onnx (FILE.onnx.json beside it).")
def export(fmt, weights, out) -> None:
    """Export a restorer for `flipnet restore --backend onnx` and other ONNX runtimes."""
    from flipnet.models.onnx_export import export_onnx
    from flipnet.weights import resolve_weights

    click.echo(f"wrote {export_onnx(resolve_weights(weights), Path(out))}")


@cli.command(cls=ConfigCommand, config="flipnet.pipelines.bench:BenchConfig")
def bench(dry_run, **kwargs) -> None:
    """Build the standard test sets, run every available method, regenerate docs/BENCHMARKS.md."""
    from flipnet.pipelines.bench import BenchConfig, run_bench

    cfg = resolve_config(BenchConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    results = run_bench(cfg)
    click.echo(f"bench: {len(results['methods'])} methods x {len(results['sets'])} sets in "
               f"{results['seconds'] / 60:.1f} min -> {cfg.docs}/BENCHMARKS.md")


@cli.command(cls=ConfigCommand, config="flipnet.serve:ServeConfig")
def serve(dry_run, **kwargs) -> None:
    """Start the local web page: upload a photo, pick a method, compare before/after, download."""
    from flipnet.serve import ServeConfig, run_server

    cfg = resolve_config(ServeConfig, kwargs)
    if dry_run:
        return print_config(cfg)
    run_server(cfg)


@cli.command()
@click.option("--input", "input_path", type=click.Path(exists=True), default=None,
              help="A photo with faces. [default: scikit-image's astronaut photo]")
@click.option("--out", type=click.Path(), default="demo-output", help="Output folder.")
@click.option("--seed", default=0, help="Seed of the synthetic degradation.")
def demo(input_path, out, seed) -> None:
    """The main job on shipped weights: degrade a real photo's face, restore it, paste it back."""
    from flipnet.pipelines.demo import run_demo

    report = run_demo(input_path, Path(out), seed=seed)
    click.echo(report)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _one_line(e: click.ClickException) -> str:
    """A click error as one line naming the command, e.g. "flipnet restore: No such option
    '--stepz'. (Did you mean one of: '--seed', '--steps'?)"."""
    words = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    return f"{ctx.command_path}: {words}" if ctx is not None else words


def main() -> None:
    """Console entry point: run the CLI, turning flipnet errors into one-line messages."""
    import warnings

    warnings.formatwarning = _one_line_warning
    # a NUL byte makes every os call raise ValueError; no path or value can hold one (a shell
    # cannot pass one either), so refuse it here, naming the option, before any command runs
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if "\x00" in arg:
            name = arg.split("=", 1)[0] if arg.startswith("--") and "=" in arg else (
                args[i - 1] if i and args[i - 1].startswith("-") else f"argument {i + 1}")
            click.echo(f"error: {name}: value {arg!r} contains a NUL byte", err=True)
            sys.exit(2)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {_one_line(e)}", err=True)
        sys.exit(e.exit_code)
    except FlipnetError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
