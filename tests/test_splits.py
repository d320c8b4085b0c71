"""Held-out splits: stable under renaming of folders/extensions, disjoint, about the right size."""

from flipnet.splits import (
    age_band,
    group_balance_weights,
    in_split,
    lfw_split,
    split_of,
    utkface_labels,
    utkface_split,
)


def test_utkface_split_ignores_folder_and_extension():
    names = [f"{a}_{g}_{r}_2017011{a % 10}2135{a:05d}" for a in range(1, 90)
             for g in (0, 1) for r in range(5)]
    for n in names:
        raw = f"/data/utkface/{n}.jpg.chip.jpg"
        prepared = f"out/prepared/utkface-128/{n}.png"
        assert utkface_split(raw) == utkface_split(prepared)
    frac = sum(utkface_split(n) == "test" for n in names) / len(names)
    assert 0.01 < frac < 0.12


def test_lfw_split_by_person_letter():
    assert lfw_split("lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg") == "train"
    assert lfw_split("lfw/Hugh_Grant/x.jpg") == "train"
    assert lfw_split("lfw/Ian_Thorpe/x.jpg") == "test"
    assert split_of("out/prepared/lfw-128/Laura_Bush/x.png") == "test"


def test_in_split_partitions():
    paths = [f"u/{i}_0_0_x{i}.png" for i in range(300)]
    train, test = in_split(paths, "train"), in_split(paths, "test")
    assert len(train) + len(test) == 300 and not set(train) & set(test)
    assert len(in_split(paths, "all")) == 300


def test_utkface_labels():
    assert utkface_labels("26_1_2_2017.jpg.chip.jpg") == {"age": 26, "gender": "female",
                                                          "race": "asian"}
    assert utkface_labels("garbage.png") is None


def test_group_balance_weights_give_each_group_equal_mass():
    names = ([f"70_0_1_2017{i:04d}.jpg.chip.png" for i in range(2)]      # 65+, black: rare
             + [f"25_1_0_2017{i:04d}.jpg.chip.png" for i in range(8)]    # 15-39, white: common
             + [f"30_0_0_2017{i:04d}.jpg.chip.png" for i in range(4)]    # 15-39, white too
             + ["unlabelled.png"])
    w = group_balance_weights(names)
    assert w[:2] == [0.5, 0.5] and all(x == 1 / 12 for x in w[2:14]) and w[14] == 1.0
    assert [age_band(a) for a in (0, 14, 15, 39, 40, 64, 65, 90)] == [
        "0-14", "0-14", "15-39", "15-39", "40-64", "40-64", "65+", "65+"]
