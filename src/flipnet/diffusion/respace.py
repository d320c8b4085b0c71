"""Timestep respacing of a trained schedule (improved DDPM sec. 4, guided-diffusion semantics).

``space_timesteps(1000, "250")`` keeps 250 evenly strided original timesteps, ``"ddim50"`` keeps
``range(0, 1000, 20)``, ``"10,15,20"`` splits the range into sections with that many steps each.
The samplers work on original timesteps directly (alpha_bar of the kept steps, the model called
with the original t), so ``sampling_timesteps`` is all that respacing needs: no respaced schedule
of its own is built.
"""

from __future__ import annotations


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int]) -> list[int]:
    """Original timesteps to keep, ascending (guided-diffusion ``space_timesteps``)."""
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            desired = int(spec[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {desired} DDIM steps from {num_timesteps}")
        section_counts = [int(x) for x in spec.split(",") if x]
    if not section_counts:
        raise ValueError("space_timesteps: no step counts given")
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count or count < 1:
            raise ValueError(f"cannot take {count} steps from a section of {size} timesteps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(steps))


def sampling_timesteps(num_timesteps: int, section_counts: str | int | list[int], *,
                       start_index: int | None = None) -> list[int]:
    """Descending original timesteps for a sampler; ``start_index`` = respaced step to start at.

    Example: the pseudo-target generator diffuses to respaced step 150 of ``"250"`` and samples
    back: ``ts = sampling_timesteps(1000, "250", start_index=150)``; ``x = q_sample(x0, ts[0])``.
    """
    kept = space_timesteps(num_timesteps, section_counts)
    if start_index is not None:
        if not 0 <= start_index < len(kept):
            raise ValueError(f"start_index {start_index} outside 0..{len(kept) - 1}")
        kept = kept[:start_index + 1]
    return kept[::-1]
