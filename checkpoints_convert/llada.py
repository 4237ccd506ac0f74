"""Convert a published LLaDA checkpoint: `python -m checkpoints_convert.llada --hf_dir=DIR --out=DIR`."""

from checkpoints_convert.convert import run

if __name__ == "__main__":
    run("llada")
