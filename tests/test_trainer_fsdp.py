"""trainer=fsdp: the config composes and Lightning's FSDPStrategy is built from it on CPU (no step is run:
FSDP's bf16 sharded training needs GPUs)."""
from __future__ import annotations

from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import ShardingStrategy

from test_train_run import compose_cfg


def test_fsdp_config_builds_the_lightning_strategy():
    cfg = compose_cfg(["trainer=fsdp", "paths.root_dir=/r", "paths.output_dir=/o"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP  # the string became the enum
    assert strategy.kwargs["use_orig_params"] is True  # needed: most of the model is frozen
    assert strategy.kwargs["limit_all_gathers"] is True and strategy._state_dict_type == "full"
