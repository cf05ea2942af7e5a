"""The web app: upload an image (or type a prompt), get 16 views and a mesh (thin Hydra entry point; logic in
syncdreamer.pipelines.app).

    python app.py checkpoint=ckpt/syncdreamer-pretrain.ckpt [port=7860 host=127.0.0.1]
    python app.py          # serves the checkpoint `make demo` trained
"""
import os
import sys

import hydra
from omegaconf import DictConfig

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    from syncdreamer.pipelines.app import serve

    code = serve(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
