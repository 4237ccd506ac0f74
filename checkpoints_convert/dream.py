"""Convert a published Dream checkpoint: `python -m checkpoints_convert.dream --hf_dir=DIR --out=DIR`."""

from checkpoints_convert.convert import run

if __name__ == "__main__":
    run("dream")
