"""Two CPU processes (2 devices each) run one evaluation through jax.distributed; process 0 merges."""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest

from d2cache_jax import checkpoint, config
from d2cache_jax import params as params_lib
from tests.evaluation_helpers import fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from d2cache_jax.evaluation.tasks import synthetic

    cfg = config.tiny_llada(vocab_size=synthetic.VOCAB_SIZE, mask_token_id=synthetic.MASK_ID,
                            eos_token_id=synthetic.EOS_ID, pad_token_id=synthetic.EOS_ID,
                            bos_token_id=synthetic.BOS_ID)
    out = checkpoint.save(cfg, params_lib.init_params(cfg, jax.random.key(0)),
                          str(tmp_path_factory.mktemp("ckpt") / "tiny-llada-base"))
    synthetic.save_tokenizer(out)
    return out


def _evaluate(out, ckpt, devices: int, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "experiments.evaluate", "--task=gsm8k", f"--data={fixture('gsm8k_test.jsonl')}",
           f"--checkpoint={ckpt}", f"--output_dir={out}", "--num_fewshot=0", "--limit=3", "--gen_length=8",
           "--steps=4", "--noprogress", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_processes_merge_into_one_run(tiny_checkpoint, tmp_path):
    port = _free_port()
    multi = [_evaluate(tmp_path / "multi", tiny_checkpoint, 2, "--mesh=data:1,model:2",
                       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}")
             for i in range(2)]
    single = _evaluate(tmp_path / "single", tiny_checkpoint, 1)
    outs = [p.communicate(timeout=900) for p in multi + [single]]
    for p, (_, err) in zip(multi + [single], outs):
        assert p.returncode == 0, err[-3000:]
    assert '"num_samples": 3' in outs[0][0] and "num_samples" not in outs[1][0]  # process 0 reports
    assert "mesh data:1,model:2" in outs[0][0] and "mesh" not in outs[1][0]

    merged = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert merged["num_samples"] == 3 and merged["complete"] and merged["processes"] == 2
    assert merged["config"]["num_items"] == 3 and "process" not in merged["config"]
    lines = (tmp_path / "multi" / "samples.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    assert [s["index"] for s in samples] == [0, 1, 2]
    for i, n in ((0, 1), (1, 2)):  # contiguous parts, each resumable on its own; their metrics removed
        part = tmp_path / "multi" / f"process_{i:03d}"
        assert len((part / "samples.jsonl").read_text().splitlines()) == n
        assert not (part / "metrics.json").exists()
    # The same outputs as one process on one device.
    ref = [json.loads(line) for line in (tmp_path / "single" / "samples.jsonl").read_text().splitlines()]
    assert [s["output"] for s in samples] == [s["output"] for s in ref]


def test_generate_cli_prints_the_estimate_and_refuses_what_cannot_fit(tiny_checkpoint):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    run = lambda *a: subprocess.run([sys.executable, "-m", "experiments.generate", f"--checkpoint={tiny_checkpoint}",
                                     "--prompt=12+34=", "--gen_length=8", *a], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=600)
    done = run("--mesh=data:1,model:2", "--device_memory_gb=0.0001")
    assert done.returncode != 0 and "this run does not fit" in done.stderr and "Traceback" not in done.stderr
    assert "memory per device on mesh data:1,model:2 (batch 1, length 24)" in done.stdout
    done = run("--mesh=data:3")
    assert done.returncode != 0 and "mesh spec 'data:3' has 3 devices (3x1) but 2 are available" in done.stderr
