"""train.py end to end on tiny data (no Blender): configs of every experiment, a short run writing
checkpoints (with the config inside) and a sample grid, exact resume, the overfit check, bad input, and
the submitit_local sweep."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from test_datamodule import make_fake_renders
from syncdreamer.data.dataset import DataError
from syncdreamer.systems import ConfigError, load_model_from_checkpoint, train

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_cfg(overrides=(), hydra_node: bool = False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_node)


def tiny_overrides(tmp_path: Path, data_root: Path, steps: int = 2, **extra) -> list[str]:
    """experiment=smoke on fake renders, the tiny model at 64 px with V = D = 8, a few steps, CPU."""
    out = {
        "experiment": "smoke", "paths.root_dir": str(REPO), "paths.output_dir": str(tmp_path / "run"),
        "paths.log_dir": str(tmp_path / "logs"), "data.root": str(data_root), "data.prepare": "null",
        "data.latent_cache": "null", "data.val_list": "val.txt", "data.train_list": "train.txt",
        "model.volume_resolution": 8, "model.frustum_depth": 8, "trainer.max_steps": steps,
        "trainer.val_check_interval": steps, "trainer.log_every_n_steps": 1, "trainer.enable_progress_bar": False,
        "callbacks.model_checkpoint.every_n_train_steps": 1, "callbacks.periodic_checkpoint.every_n_train_steps": steps,
        "system.validation.sample_steps": 2, "logger": "csv", "vae_warmup.steps": 0,
    }
    out.update(extra)
    return [f"{k}={v}" for k, v in out.items()]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from syncdreamer.data import layout

    root = tmp_path_factory.mktemp("renders")
    uids = make_fake_renders(root, 3, 64)
    layout.write_uid_list(root / "train.txt", uids[:2])
    layout.write_uid_list(root / "val.txt", uids[2:])
    return root


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates_its_parts(experiment):
    cfg = compose_cfg([f"experiment={experiment}", "paths.root_dir=/r", "paths.output_dir=/o"], hydra_node=True)
    assert cfg.system._target_.endswith("SyncDreamerSystem") and cfg.model._target_.endswith("SyncDreamer")
    assert cfg.data.view_num == cfg.model.view_num and cfg.data.image_size == cfg.model.image_size
    if experiment not in ("smoke", "proxy"):  # the cluster recipe (smoke and proxy are CPU recipes)
        assert cfg.data.batch_size == 24 and cfg.system.optimizer.lr == 5e-5
        assert cfg.system.optimizer.volume_lr_mult == 10 and cfg.system.optimizer.warmup_steps == 100
        assert cfg.system.optimizer.warmup_start == 0.02 and cfg.trainer.devices == 8
        assert cfg.init_from.path == "/r/ckpt/zero123-xl.ckpt" and cfg.init_from.kind == "zero123"
        assert cfg.trainer.strategy._target_.endswith("DDPStrategy")
        assert list(cfg.logger) == ["wandb"] and cfg.logger.wandb.project == "syncdreamer"
        assert cfg.model.unet.model_channels == 320
    sweeps = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    if experiment == "ablation_volume_res":
        assert sweeps["model.volume_resolution"] == "16,24,32"
    if experiment == "ablation_frustum_depth":
        assert sweeps["model.frustum_depth"] == "24,32,48,64"
    if experiment == "ablation_no_volume":
        assert cfg.model.unet.depth_attention is False and cfg.system.finetune_unet is True
    # instantiate the parts (the model on the meta device: no memory, no init cost), as train() does
    from syncdreamer.systems.runner import instantiate_callbacks, instantiate_loggers

    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert (model.view_num, model.volume_config.volume_resolution, model.volume_config.frustum_depth) == (
        cfg.model.view_num, cfg.model.volume_resolution, cfg.model.frustum_depth)
    assert model.unet_config.depth_attention == cfg.model.unet.get("depth_attention", True)
    assert model.unet_config.model_channels == cfg.model.unet.model_channels
    system = instantiate(cfg.system, model=model)
    assert system.model is model
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    assert len(callbacks) == len(cfg.callbacks) and all(hasattr(cb, "on_train_start") for cb in callbacks)
    assert len(instantiate_loggers(cfg.get("logger"))) == len(cfg.logger)
    strategy = cfg.trainer.get("strategy")
    if strategy is not None and not isinstance(strategy, str):
        assert type(instantiate(strategy)).__name__ == strategy._target_.rsplit(".", 1)[1]


def test_launcher_configs_compose():
    for launcher in ("submitit_slurm", "submitit_local"):
        cfg = compose_cfg(["experiment=syncdreamer", f"hydra/launcher={launcher}", "paths.root_dir=/r"], hydra_node=True)
        assert cfg.hydra.launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_cfg(["experiment=syncdreamer", "hydra/launcher=submitit_slurm", "paths.root_dir=/r",
                       "trainer.num_nodes=4"], hydra_node=True)
    assert OmegaConf.to_container(cfg.hydra.launcher, resolve=True)["nodes"] == 4
    assert cfg.hydra.launcher.tasks_per_node == 8 and cfg.hydra.launcher.gpus_per_node == 8


def test_unknown_config_keys_are_errors():
    with pytest.raises(ConfigCompositionException, match="bogus"):
        compose_cfg(["experiment=smoke", "bogus=1"])
    with pytest.raises(ConfigCompositionException, match="volume_res"):
        compose_cfg(["experiment=smoke", "model.volume_res=8"])
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["experiment=does_not_exist"])


def test_decay_not_after_warmup_is_warned(caplog):
    """A cosine decay that would end inside the warm-up (experiment=proxy trainer.max_steps=1: decay_steps follows
    max_steps) is allowed for quick runs, but said: the rate then stays at 1 after the warm-up."""
    from syncdreamer.systems import check_config

    with caplog.at_level("WARNING"):
        check_config(compose_cfg(["experiment=proxy", "trainer.max_steps=1"]))
    assert "decay_steps=1 is not after warmup_steps=50" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_config(compose_cfg(["experiment=proxy"]))
    assert "decay_steps" not in caplog.text


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_fails_before_training(tmp_path, data_root):
    base = tiny_overrides(tmp_path, data_root)
    with pytest.raises(ConfigError, match="multiple of 8"):
        train(compose_cfg(base + ["model.volume_resolution=12"]))
    with pytest.raises(ConfigError, match="multiple of 8"):
        train(compose_cfg(base + ["model.frustum_depth=20"]))
    with pytest.raises(ConfigError, match="ckpt_path"):
        train(compose_cfg(base + [f"ckpt_path={tmp_path}/missing.ckpt"]))
    with pytest.raises(ConfigError, match="init_from.path"):
        train(compose_cfg(base + [f"init_from.path={tmp_path}/zero123-xl.ckpt"]))
    with pytest.raises(ConfigError, match="data.image_size"):
        train(compose_cfg(base + ["data.image_size=128"]))
    with pytest.raises(ConfigError, match="finetune_unet"):
        train(compose_cfg(base + ["model.unet.depth_attention=false", "system.finetune_unet=false"]))
    with pytest.raises(ConfigError, match="target_views=0"):
        train(compose_cfg(base + ["system.target_views=0"]))
    with pytest.raises(ConfigError, match="prediction_type='x0'"):
        train(compose_cfg(base + ["model.prediction_type=x0"]))
    with pytest.raises(ConfigError, match="loss_weighting='snr'"):
        train(compose_cfg(base + ["system.loss_weighting=snr"]))
    with pytest.raises(ConfigError, match="decay_steps='soon'"):
        train(compose_cfg(base + ["system.optimizer.decay_steps=soon"]))
    with pytest.raises(ConfigError, match="decay_final=2"):
        train(compose_cfg(base + ["system.optimizer.decay_steps=10", "system.optimizer.decay_final=2"]))
    for bad in ("-1", "zero", "1.5"):
        with pytest.raises(ConfigError, match=f"vae_warmup.seed={bad!r}|vae_warmup.seed={bad}"):
            train(compose_cfg(base + [f"vae_warmup.seed={bad}"]))
    for key, bad in (("equivariance", "-1.0"), ("equivariance", "much"), ("steps", "1.5"), ("batch_size", "true")):
        with pytest.raises(ConfigError, match=rf"vae_warmup.{key}=\S+ must be a non-negative"):
            train(compose_cfg(base + [f"vae_warmup.{key}={bad}"]))
    with pytest.raises(DataError, match="does not exist"):
        train(compose_cfg(base + [f"data.root={tmp_path}/no_data"]))
    empty = tmp_path / "empty"
    (empty / "target" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="no valid training object"):
        train(compose_cfg(base + [f"data.root={empty}", "data.train_list=null", "data.val_list=null"]))
    assert not (tmp_path / "run").exists()  # nothing was trained or written


def test_train_py_reports_bad_input_in_one_line(tmp_path, data_root):
    args = [sys.executable, str(REPO / "train.py")] + tiny_overrides(tmp_path, data_root) + ["model.volume_resolution=12"]
    args = [a for a in args if not a.startswith("paths.output_dir")]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: model.volume_resolution=12 must be a positive multiple of 8" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- runs
def test_short_run_writes_checkpoints_config_and_sample_grid(tmp_path, data_root):
    cfg = compose_cfg(tiny_overrides(tmp_path, data_root, steps=2))
    metrics = train(cfg)
    run = tmp_path / "run"
    assert metrics["global_step"] == 2 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "val/loss" in metrics  # held-out objects have targets
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "step0000002.ckpt").is_file()
    saved = OmegaConf.load(run / "checkpoints" / "config.yaml")
    assert saved.model.volume_resolution == 8 and saved.run_name == "smoke"
    grids = sorted((run / "images" / "val").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_0000002.png"]
    from PIL import Image

    with Image.open(grids[0]) as im:  # one held-out object: a sample row and a ground-truth row of 1 + 16 views
        assert im.size == (17 * 64, 2 * 64)
    csv = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/loss", "lr-AdamW/depth_attention", "lr-AdamW/volume", "lr-AdamW/unet",
                "train/samples_per_sec"):
        assert key in csv
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["config"]["model"]["volume_resolution"] == 8 and ckpt["global_step"] == 2
    model, config = load_model_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert config["model"]["frustum_depth"] == 8 and not model.training
    sd = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


class _StopAt(__import__("lightning").Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class _Record(__import__("lightning").Callback):
    def __init__(self):
        self.first_step, self.lrs = None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_step is None:
            self.first_step = trainer.global_step
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_interrupted_run_resumes_from_last_ckpt_with_global_step(tmp_path, data_root, monkeypatch):
    """Also exercises bf16 autocast, gradient checkpointing, EMA (state saved and restored) and logger=none."""
    import syncdreamer.systems.runner as runner

    extra = {"system.optimizer.warmup_steps": 10, "trainer.val_check_interval": 100, "logger": "none",
             "trainer.precision": "bf16-mixed", "model.use_checkpoint": "true", "system.ema.decay": 0.99}
    cfg = compose_cfg(tiny_overrides(tmp_path, data_root, steps=5, **extra))
    orig = runner.instantiate_callbacks
    monkeypatch.setattr(runner, "instantiate_callbacks", lambda c: orig(c) + [_StopAt(3)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 3
    assert ckpt["ema"]["num_updates"] == 3
    rec = _Record()
    monkeypatch.setattr(runner, "instantiate_callbacks", lambda c: orig(c) + [rec])
    resumed = compose_cfg(tiny_overrides(tmp_path, data_root, steps=5, **extra) + [f"ckpt_path={last}"])
    metrics = train(resumed)
    assert rec.first_step == 3 and metrics["global_step"] == 5
    final = torch.load(last, map_location="cpu", weights_only=True)  # plain data only: loads safely
    assert final["global_step"] == 5 and final["ema"]["num_updates"] == 5
    # the warm-up continues where it stopped: factor 0.02 + 0.98 * step / 10
    assert rec.lrs[0] == pytest.approx(1e-3 * (0.02 + 0.98 * 0.3))


def test_calibrated_latent_scale_goes_into_the_checkpoint_and_survives_resume(tmp_path, data_root):
    """vae_warmup.calibrate_scale: the fitted VAE's latent scale is set on the model, written into the run config
    of every checkpoint, used by the loader, and restored when a run resumes (not the config's 0.18215)."""
    import syncdreamer.systems.runner as runner
    from syncdreamer.systems.vae_warmup import latent_scale

    extra = {"vae_warmup.steps": 3, "vae_warmup.calibrate_scale": "true", "trainer.val_check_interval": 100}
    cfg = compose_cfg(tiny_overrides(tmp_path, data_root, steps=2, **extra))
    train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model, config = load_model_from_checkpoint(last)
    scale = config["model"]["scale_factor"]
    assert scale != pytest.approx(0.18215) and model.scale_factor == scale
    assert model.first_stage_model.scale_factor == model.model.scale_factor == scale
    from syncdreamer.data import layout

    uids = layout.read_uid_list(data_root / "train.txt")  # 1 / std of the fitted VAE's latents of the train views
    assert latent_scale(model.first_stage_model, data_root, uids, 64, 16) == pytest.approx(scale, rel=1e-4)
    resumed = compose_cfg(tiny_overrides(tmp_path, data_root, steps=4, **extra) + [f"ckpt_path={last}"])
    rebuilt = runner._build_model(resumed, datamodule=None)
    assert rebuilt.scale_factor == scale and resumed.model.scale_factor == scale


def test_overfit_two_objects_loss_goes_down(tmp_path, data_root):
    """A short overfit on two objects through Lightning: the loss on fixed draws drops clearly."""
    import lightning as L

    cfg = compose_cfg(tiny_overrides(tmp_path, data_root, steps=12, **{"system.optimizer.warmup_steps": 0}))
    L.seed_everything(0)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    system = instantiate(cfg.system, model=instantiate(cfg.model))
    items = [dm.train_set.__class__(dm.root, dm.train_uids, 16, 64, input_index=0)[i] for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("target_image", "input_image", "input_elevation")}

    def fixed_loss():
        system.eval()
        with torch.no_grad():
            return sum(system.compute_loss(batch, generator=torch.Generator().manual_seed(s))[0].item()
                       for s in range(4)) / 4

    before = fixed_loss()
    trainer = L.Trainer(accelerator="cpu", max_steps=12, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(system, datamodule=dm)
    after = fixed_loss()
    assert after < 0.85 * before, (before, after)


@pytest.mark.slow
def test_submitit_local_sweep_over_volume_resolution(tmp_path, data_root):
    """`python train.py -m ... model.volume_resolution=8,16 hydra/launcher=submitit_local`: two jobs finish."""
    over = [o for o in tiny_overrides(tmp_path, data_root, steps=2) if not o.startswith("paths.output_dir")]
    over = [o for o in over if not o.startswith("model.volume_resolution")]
    args = [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=submitit_local",
            "model.volume_resolution=8,16", "logger=none"] + [o for o in over if not o.startswith("logger=")]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = next((tmp_path / "logs" / "train" / "multiruns" / "smoke").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2
    for job, v in zip(jobs, (8, 16)):
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert OmegaConf.load(job / ".hydra" / "config.yaml").model.volume_resolution == v
        assert OmegaConf.load(job / "checkpoints" / "config.yaml").model.volume_resolution == v


@pytest.mark.slow
@pytest.mark.blender
def test_smoke_experiment_end_to_end(tmp_path):
    """`python train.py experiment=smoke`: renders its data with Blender, trains, writes checkpoints and grids."""
    import shutil

    if shutil.which("blender") is None:
        pytest.skip("Blender not installed")
    args = [sys.executable, str(REPO / "train.py"), "experiment=smoke", f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path / 'logs'}", "trainer.max_steps=4", "trainer.val_check_interval=4",
            "vae_warmup.steps=10", "system.validation.sample_steps=2", "data.prepare.num_objects=4",
            "data.prepare.val_objects=1", "trainer.enable_progress_bar=false"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = next((tmp_path / "logs" / "train" / "runs" / "smoke").iterdir())
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert list((run / "images" / "val").glob("step_*.png"))


@pytest.mark.slow
def test_wandb_offline_logger_runs_without_network(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_cfg(tiny_overrides(tmp_path, data_root, steps=2, logger="wandb") +
                      ["logger.wandb.offline=true", "logger.wandb.project=test", "tags=[a,b]", "group=g"])
    metrics = train(cfg)
    assert metrics["global_step"] == 2
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("kind", ["official", "zero123"])
def test_init_from_checkpoint_loads_weights_before_training(tmp_path, data_root, kind):
    """init_from loads a checkpoint into the fresh model (frozen VAE weights survive training unchanged)."""
    cfg = compose_cfg(tiny_overrides(tmp_path, data_root, steps=1, **{"callbacks.periodic_checkpoint.every_n_train_steps": 2}))
    torch.manual_seed(123)
    donor = instantiate(cfg.model).state_dict()
    if kind == "zero123":  # Zero123 holds the base UNet, the VAE, cc_projection and the schedule buffers
        keep = ("model.diffusion_model.input_blocks", "model.diffusion_model.middle_block.",
                "model.diffusion_model.output_blocks", "model.diffusion_model.out.", "model.diffusion_model.time_embed",
                "first_stage_model.", "cc_projection.")
        schedule = ("betas", "alphas_cumprod", "alphas", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                    "posterior_variance", "posterior_log_variance_clipped")
        donor = {k: v for k, v in donor.items() if k.startswith(keep) or k in schedule}
    path = tmp_path / f"{kind}.ckpt"
    torch.save({"state_dict": donor}, path)
    train(compose_cfg(tiny_overrides(tmp_path, data_root, steps=1, **{  # the official recipe: base UNet frozen
        "callbacks.periodic_checkpoint.every_n_train_steps": 2, "system.finetune_unet": "false"})
        + [f"init_from.path={path}", f"init_from.kind={kind}"]))
    sd = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    vae_keys = [k for k in donor if k.startswith("first_stage_model.")]
    assert vae_keys and all(torch.equal(sd["model." + k], donor[k]) for k in vae_keys)
    assert torch.equal(sd["model.cc_projection.weight"], donor["cc_projection.weight"])


def _ddp_failure_report(proc, logs: Path) -> str:
    """What a failed DDP run printed: its stdout / stderr tails and every rank's Hydra log tail (rank 1's
    traceback is otherwise cut off by rank 0's, which only says that its peer went away)."""
    parts = [proc.stdout[-3000:], proc.stderr[-6000:]]
    for log in sorted(logs.rglob("*.log")):
        parts.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])
    return "\n".join(parts)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, data_root):
    """`trainer.strategy=ddp trainer.devices=2` on CPU (gloo): both ranks train, rank 0 writes one run folder.

    One CI run (2026-12-06) lost rank 1 after its first step (gloo: "Connection closed by peer" in rank 0's
    checkpoint barrier) and 11 local repetitions did not; the run is repeated once in a fresh folder when that
    happens, with a warning that carries the first attempt's report (PYTHONFAULTHANDLER shows a crash's
    stack). Two failures in a row fail the test."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    for attempt in (1, 2):
        work = tmp_path / f"attempt{attempt}"
        work.mkdir()
        over = [o for o in tiny_overrides(work, data_root, steps=2) if not o.startswith("paths.output_dir")]
        args = [sys.executable, str(REPO / "train.py")] + over + ["data.batch_size=1", "trainer.strategy=ddp",
                                                                 "trainer.devices=2"]
        proc = subprocess.run(args, capture_output=True, text=True, cwd=work, timeout=900, env=env)
        if proc.returncode == 0:
            break
        report = _ddp_failure_report(proc, work / "logs")
        if attempt == 2 or "Connection closed by peer" not in proc.stdout + proc.stderr:
            pytest.fail(f"attempt {attempt} exited {proc.returncode}:\n{report}")
        warnings.warn(f"DDP attempt 1 lost a rank, repeated once; its report:\n{report[-4000:]}")
    runs = list((work / "logs" / "train" / "runs" / "smoke").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / "train_ddp_process_1.log").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert list((run / "images" / "val").glob("step_*.png"))
