"""Objaverse selection / download / resume against a fake local store (never touches the network)."""
import csv
import gzip
import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from syncdreamer.data import layout
from syncdreamer.data.objaverse_download import DownloadError, configure_objaverse, run_download, select_uids

HF = "https://huggingface.co/datasets/allenai/objaverse/resolve/main/"
UIDS = [f"{i:032x}" for i in range(1, 9)]
LVIS = {"mug": UIDS[:3], "chair": UIDS[3:5], "lamp": UIDS[5:6]}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A fake Hugging Face 'remote' folder; urlretrieve copies from it and counts the fetches."""
    import objaverse

    remote = tmp_path / "remote"
    paths = {u: f"glbs/000-{i // 4:03d}/{u}.glb" for i, u in enumerate(UIDS)}
    for u, rel in paths.items():
        (remote / rel).parent.mkdir(parents=True, exist_ok=True)
        (remote / rel).write_bytes(b"glTF" + u.encode())
    with gzip.open(remote / "object-paths.json.gz", "wt") as f:
        json.dump(paths, f)
    with gzip.open(remote / "lvis-annotations.json.gz", "wt") as f:
        json.dump(LVIS, f)
    fetched, broken = [], set()

    def fake_urlretrieve(url, filename, *a, **k):
        assert url.startswith(HF), f"unexpected network access to {url}"
        rel = url[len(HF):]
        if any(b in rel for b in broken):
            raise OSError(f"HTTP Error 500 for {rel}")
        fetched.append(rel)
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(remote / rel, filename)
        return filename, None

    monkeypatch.setattr(urllib.request, "urlretrieve", fake_urlretrieve)
    # configure_objaverse rewrites these module globals; monkeypatch restores them afterwards
    monkeypatch.setattr(objaverse, "BASE_PATH", objaverse.BASE_PATH)
    monkeypatch.setattr(objaverse, "_VERSIONED_PATH", objaverse._VERSIONED_PATH)
    return {"fetched": fetched, "broken": broken, "paths": paths, "dir": tmp_path / "store"}


def test_selection_modes(fake_hub, tmp_path):
    ov = configure_objaverse(fake_hub["dir"])
    assert Path(ov._VERSIONED_PATH).is_relative_to(tmp_path)  # never the home directory
    assert select_uids(ov, uids=[UIDS[2], UIDS[0] + ".glb", UIDS[2]]) == [UIDS[2], UIDS[0]]
    f = layout.write_uid_list(tmp_path / "u.txt", UIDS[4:6])
    assert select_uids(ov, uid_file=f) == UIDS[4:6]
    assert select_uids(ov, lvis_categories=["mug", "lamp"]) == sorted(LVIS["mug"]) + LVIS["lamp"]
    two = select_uids(ov, lvis_categories=["mug", "chair"], count=2, seed=1)
    assert len(two) == 2 and set(two) <= set(LVIS["mug"] + LVIS["chair"])
    assert two == select_uids(ov, lvis_categories=["mug", "chair"], count=2, seed=1)  # seeded
    rand = select_uids(ov, count=3, seed=0)
    assert len(rand) == 3 and set(rand) <= set(UIDS)
    with pytest.raises(DownloadError, match="unknown LVIS categories.*mugs.*mug"):
        select_uids(ov, lvis_categories=["mugs"])
    with pytest.raises(DownloadError, match="nothing selected"):
        select_uids(ov)


def test_download_resume_and_manifest(fake_hub):
    cfg = {"download_dir": str(fake_hub["dir"]), "lvis_categories": ["mug"], "uids": [UIDS[7], "f" * 32]}
    s1 = run_download(cfg, log=lambda *a: None)
    assert (s1["downloaded"], s1["present"], s1["unknown_uid"], s1["failed"]) == (4, 0, 1, 0)
    glbs = sorted(p.stem for p in Path(s1["glb_dir"]).rglob("*.glb"))
    assert glbs == sorted(LVIS["mug"] + [UIDS[7]])
    n_fetch = len(fake_hub["fetched"])
    # resume: nothing is fetched again, one more category only fetches the new objects
    s2 = run_download(dict(cfg, lvis_categories=["mug", "chair"]), log=lambda *a: None)
    assert (s2["downloaded"], s2["present"]) == (2, 4)
    new = [r for r in fake_hub["fetched"][n_fetch:] if r.endswith(".glb")]
    assert sorted(Path(r).stem for r in new) == sorted(LVIS["chair"])
    manifest = json.loads(Path(s2["manifest_json"]).read_text())["objects"]
    status = {r["uid"]: r["status"] for r in manifest}
    assert status["f" * 32] == "unknown_uid" and status[LVIS["chair"][0]] == "downloaded"
    assert status[LVIS["mug"][0]] == "present"
    with open(s2["manifest_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and all(int(r["bytes"]) > 0 for r in rows if r["status"] != "unknown_uid")
    assert sorted(layout.read_uid_list(s2["uid_list"])) == sorted(LVIS["mug"] + LVIS["chair"] + [UIDS[7]])


def test_one_failing_uid_does_not_stop_the_batch(fake_hub):
    fake_hub["broken"].add(UIDS[1])
    s = run_download({"download_dir": str(fake_hub["dir"]), "uids": UIDS[:4]}, log=lambda *a: None)
    assert (s["downloaded"], s["failed"]) == (3, 1)
    rec = {r["uid"]: r for r in json.loads(Path(s["manifest_json"]).read_text())["objects"]}
    assert rec[UIDS[1]]["status"] == "failed" and "500" in rec[UIDS[1]]["error"]
    assert not list(Path(s["glb_dir"]).rglob("*.tmp"))  # no half files left
    fake_hub["broken"].clear()
    s = run_download({"download_dir": str(fake_hub["dir"]), "uids": UIDS[:4]}, log=lambda *a: None)
    assert (s["downloaded"], s["present"], s["failed"]) == (1, 3, 0)


def test_offline_index_gives_a_clear_error(tmp_path, monkeypatch):
    import objaverse

    monkeypatch.setattr(objaverse, "BASE_PATH", objaverse.BASE_PATH)
    monkeypatch.setattr(objaverse, "_VERSIONED_PATH", objaverse._VERSIONED_PATH)

    def offline(url, filename, *a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(DownloadError, match="huggingface.co"):
        run_download({"download_dir": str(tmp_path), "count": 2}, log=lambda *a: None)


def test_hydra_config_composes_and_runs(fake_hub):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="download", overrides=[f"download_dir={fake_hub['dir']}", "count=3", "seed=5"])
    s = run_download(OmegaConf.to_container(cfg, resolve=True), log=lambda *a: None)
    assert s["downloaded"] == 3 and Path(s["manifest_json"]).parent == fake_hub["dir"]
