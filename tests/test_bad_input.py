"""Bad files and bad flags (issue 13): one `error:` line naming the file, field or flag, exit status 2,
never a traceback, and nothing computed before the check. The entry points run as subprocesses, several
at a time; the model is the tiny one shipped in d2cache_jax/assets/tiny_arith."""

import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest

from checkpoints_convert.convert import convert
from d2cache_jax import files
from d2cache_jax.checkpoint import load
from d2cache_jax.cli import InputError
from d2cache_jax.config import ModelConfig, from_hf_config, tiny_dream, tiny_llada
from d2cache_jax.evaluation.runner import read_samples
from d2cache_jax.hf.safetensors_io import CheckpointError, read_header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "d2cache_jax", "assets", "tiny_arith")
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
GEN = ("--gen_length=32", "--steps=32", "--block_length=32")  # what tiny_arith's d2cache_generation.json says


def run_all(*commands: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """Run `python -m MODULE ARGS...` for every command at once; (exit status, stdout, stderr) each."""
    procs = [subprocess.Popen([sys.executable, "-m", *c], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append((p.returncode, stdout, stderr))
    return out


def assert_one_line(result: tuple[int, str, str], *needles: str, only: bool = True) -> None:
    """Exit status 2 and one `error:` line holding every needle; `only`: stderr holds nothing else."""
    rc, stdout, stderr = result
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1, (rc, stderr)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert not only or len(lines) == 1, stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def model_copy(tmp_path, name: str = "model", **config_over) -> str:
    """A copy of the tiny model with config.json fields replaced (a value of `...` removes the field)."""
    path = str(tmp_path / name)
    shutil.copytree(TINY, path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(config_over)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({k: v for k, v in cfg.items() if v is not ...}, f)  # NaN is written as NaN
    return path


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# --- config.json values: one check for both families, in the generator and the converter -----------

def test_config_values_checked_once_for_both_families():
    for make in (tiny_llada, tiny_dream):
        make()  # the presets are valid
        for over, msg in [({"mask_token_id": 256}, r"mask_token_id must be a token id in \[0, 255\]"),
                          ({"eos_token_id": -1}, "eos_token_id must be a token id"),
                          ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number > 0"),
                          ({"rope_theta": float("inf")}, "rope_theta must be a finite number > 0"),
                          ({"max_seq_len": -1}, "max_seq_len must be a positive integer, got -1"),
                          ({"n_heads": 3}, "n_heads=3 does not divide d_model=64"),
                          ({"d_model": "64"}, "d_model must be a positive integer, got '64'")]:
            with pytest.raises(ValueError, match=msg):
                make(**over)
    with pytest.raises(ValueError, match="missing ModelConfig field"):
        ModelConfig.from_dict({"family": "llada"})
    # The Hugging Face readers name the config.json key, not ours.
    with open(os.path.join(TINY, "config.json")) as f:
        hf = json.load(f)
    with pytest.raises(ValueError, match="max_sequence_length must be a positive integer, got -1"):
        from_hf_config({**hf, "max_sequence_length": -1})
    with pytest.raises(ValueError, match=r"mask_token_id must be a token id in \[0, 8\] \(embedding_size=9\)"):
        from_hf_config({**hf, "mask_token_id": 9})
    with pytest.raises(ValueError, match="must hold a JSON object, got a JSON list"):
        from_hf_config([hf])


def test_bad_config_values_stop_generate_and_convert(tmp_path):
    cases = [({"mask_token_id": 9}, r"mask_token_id must be a token id in [0, 8] (embedding_size=9), got 9"),
             ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number > 0, got nan"),
             ({"max_sequence_length": -1}, "max_sequence_length must be a positive integer, got -1"),
             ({"d_model": "abc"}, "d_model must be a positive integer, got 'abc'"),
             ({"n_heads": 3}, "n_heads=3 does not divide d_model=128")]
    dirs = [model_copy(tmp_path, f"m{i}", **over) for i, (over, _) in enumerate(cases)]
    results = run_all(*[("experiments.generate", f"--checkpoint={d}") for d in dirs],
                      *[("checkpoints_convert.llada", f"--hf_dir={d}", f"--out={d}_out") for d in dirs[:2]])
    for d, (_, msg), res in zip(dirs + dirs[:2], cases + cases[:2], results):
        assert_one_line(res, f"{d}/config.json", msg)
        assert not res[1].strip()  # nothing generated
    assert not os.path.exists(f"{dirs[0]}_out") and not os.path.exists(f"{dirs[1]}_out")


def test_unreadable_config_and_missing_tokenizer(tmp_path):
    broken, array, no_tok = (model_copy(tmp_path, n) for n in ("broken", "array", "no_tok"))
    write_text(os.path.join(broken, "config.json"), '{"d_model": 128,')
    write_text(os.path.join(array, "config.json"), "[1, 2]")
    os.remove(os.path.join(no_tok, "tokenizer.json"))
    results = run_all(*[("experiments.generate", f"--checkpoint={d}") for d in (broken, array, no_tok)],
                      ("checkpoints_convert.llada", f"--hf_dir={broken}", f"--out={tmp_path}/out"))
    assert_one_line(results[0], f"{broken}/config.json: not a readable JSON file")
    assert_one_line(results[1], f"{array}/config.json", "must hold a JSON object, got a JSON list")
    assert_one_line(results[2], f"no tokenizer in {no_tok}", "tokenizer.json")
    assert_one_line(results[3], f"{broken}/config.json: not a readable JSON file")


def test_bad_generation_defaults_file(tmp_path):
    cases = [("{", "not a readable JSON file"), ("[32]", "must hold a JSON object of generation options"),
             ('{"gen_length": "abc"}', "gen_length='abc' in "), ('{"threshold": 2}', "threshold=2 in "),
             ('{"gen_lenght": 32}', "unknown generation option(s) gen_lenght")]
    dirs = []
    for i, (text, _) in enumerate(cases):
        dirs.append(model_copy(tmp_path, f"m{i}"))
        write_text(os.path.join(dirs[-1], "d2cache_generation.json"), text)
    results = run_all(*[("experiments.generate", f"--checkpoint={d}") for d in dirs])
    for d, (_, msg), res in zip(dirs, cases, results):
        assert_one_line(res, f"{d}/d2cache_generation.json", msg)
    assert "must be an integer >= 1" in results[2][2] and "must be a number in [0, 1]" in results[3][2]


# --- flags --------------------------------------------------------------------------------------

def test_bad_generation_flags(tmp_path):
    cases = [("--threshold=2", "--threshold=2.0: must be a number in [0, 1]"),
             ("--temperature=nan", "--temperature=nan: must be a finite number >= 0"),
             ("--factor=-1", "--factor=-1.0: must be a finite number > 0"),
             ("--seed=99999999999999999999", "--seed=99999999999999999999: must be an integer in [0, 4294967295]"),
             (f"--output_json={tmp_path}", f"--output_json={tmp_path} is a directory"),
             ("--gen_length=100000", "--gen_length=100000 plus the prompt's 27 tokens exceeds the model's context "
                                     "of 128 tokens"),
             ("--chat=yes", "--chat=yes but the tokenizer in"),
             ]
    results = run_all(*[("experiments.generate", flag) for flag, _ in cases])
    for (flag, msg), res in zip(cases, results):
        assert_one_line(res, msg)
        assert not res[1].strip(), flag  # checked before anything was generated
    assert "use --gen_length <= 101" in results[-2][2] and "no chat template" in results[-1][2]


def test_converter_entry_points_name_the_problem(tmp_path):
    results = run_all(("checkpoints_convert.convert",),
                      ("checkpoints_convert.llada", f"--hf_dir={tmp_path / 'nope'}", f"--out={tmp_path / 'o'}"))
    assert_one_line(results[0], "run python -m checkpoints_convert.llada")
    assert_one_line(results[1], f"--hf_dir={tmp_path / 'nope'} is not a directory")
    assert not (tmp_path / "o").exists()


def test_benchmark_report_and_trainer_flags(tmp_path):
    """The benchmark, the report and the trainer refuse bad flags as generate does, before any work:
    the trainer before training (a bad export dtype or an existing export folder would otherwise
    surface only after the run)."""
    (tmp_path / "exists").mkdir()
    (tmp_path / "file").write_text("x")
    bench = ("experiments.benchmark", "--methods=dual", "--decoders=vanilla", "--gen_length=32")
    train = ("experiments.train_tiny", f"--workdir={tmp_path / 'w'}", "--steps=1")
    cases = [
        (bench + ("--options=[1]",), "--options must be a JSON object"),
        (bench + ('--options={"nope": 1}',), "--options: unknown generation option(s) nope"),
        (bench + ('--options={"threshold": 2}',), "--options: threshold=2: must be a number in [0, 1]"),
        (bench + ('--options={"block_length": 5}',), "gen_length=32 is not divisible by block_length=5"),
        (bench + ("--batch_size=0",), "--batch_size=0"),
        (bench + ("--sweep=gen_length", "--sweep_values=8,x"), "--sweep_values must be integers >= 1, got 8,x"),
        (bench + (f"--checkpoint={tmp_path / 'exists'}",), "is neither a converted checkpoint"),
        (("experiments.report", f"--runs={tmp_path / 'exists'}"), "no metrics.json here or below"),
        (train + ("--export_dtype=int8",), "--export_dtype=int8"),
        (train + (f"--export_dir={tmp_path / 'exists'}",), "already exists"),
        (train + ("--n_heads=3",), "n_heads=3 does not divide d_model=128"),
        (train + ("--lr=0",), "--lr must be > 0"),
        (("experiments.train_tiny", f"--workdir={tmp_path / 'file'}"), "is a file, not a folder"),
    ]
    for (cmd, msg), res in zip(cases, run_all(*[c for c, _ in cases])):
        assert_one_line(res, msg)
        assert not res[1].strip(), cmd  # nothing run
    assert not (tmp_path / "w").exists()


_OPTION_CHECKS = """
import re
from d2cache_jax.cli import InputError
from experiments.flags_common import check_values

def refused(opts, pattern, *source):
    try:
        check_values(opts, *source)
    except InputError as e:
        assert re.search(pattern, str(e)), (pattern, str(e))
    else:
        raise AssertionError(f"accepted {opts}")

for name, value, allowed in [("gamma", -1.0, ">= 0"), ("alg_temp", -1.0, ">= 0"), ("cache_sigma", -1.0, "> 0"),
                             ("cache_sigma", float("inf"), "> 0"), ("temperature", float("-inf"), ">= 0"),
                             ("threshold", float("nan"), "in [0, 1]"), ("sigma", float("nan"), ">= 0"),
                             ("cfg_scale", float("nan"), ">= 0"), ("top_p", 0.0, "in (0, 1]"),
                             ("gen_length", 0, ">= 1"), ("steps", 2.5, ">= 1"), ("seed", -1, "[0, 4294967295]"),
                             ("kp", True, ">= 1")]:
    refused({name: value}, rf"--{name}={value}: must be .*{re.escape(allowed)}")
refused({"gamma": -1}, r"gamma=-1 in gen\\.json: must be", "gen.json")
refused({"stop_at_eos": "yes"}, "stop_at_eos='yes' in gen.json: must be true or false", "gen.json")
check_values({"gamma": 0.0, "threshold": 1, "seed": 2**32 - 1, "top_p": None, "cache_sigma": 1e-3})
print("ok")
"""


def test_option_values_checked_with_the_flags():
    """The checks behind the flags (and d2cache_generation.json), for the values not run above; in their
    own process, as the scripts' absl flags must not meet other scripts' flags in this one."""
    out = subprocess.run([sys.executable, "-c", _OPTION_CHECKS], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# --- converted checkpoints with damaged array files ---------------------------------------------

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("conv") / "tiny")
    convert(TINY, out)
    return out


# orbax leaves the reads of the other arrays of a failed restore to be collected later (in-process only).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_damaged_converted_checkpoint_names_the_leaf(converted, tmp_path, damage):
    path = str(tmp_path / "ckpt")
    shutil.copytree(converted, path)
    item = os.path.join(path, "params", "layers.mlp.w_up")  # every layer's w_up, one item
    chunk = os.path.join(item, "w_up", "0.0.0")
    size = os.path.getsize(chunk)
    if damage == "missing":
        os.remove(chunk)
    elif damage == "truncated":
        os.truncate(chunk, size // 2)
    else:
        write_text(chunk, "x" * size)
    with pytest.raises(InputError, match=rf"params leaf layers\.mlp\.w_up \({re.escape(item)}\) cannot be read"
                                         rf".*{re.escape(chunk)}.*convert the model again"):
        load(path)
    if damage == "garbage":  # the command line: one line, no orbax traceback, no noise at exit
        assert_one_line(run_all(("experiments.generate", f"--checkpoint={path}", *GEN))[0],
                        "damaged converted checkpoint: params leaf layers.mlp.w_up", only=False)


def test_v1_converted_checkpoint_on_the_command_line(converted, tmp_path):
    """A directory of the previous converted format: one error line with the command that converts it again,
    before anything is generated."""
    path = str(tmp_path / "old")
    shutil.copytree(converted, path)
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({**manifest, "format": "d2cache-jax/converted-v1"}, f)
    rc, stdout, stderr = run_all(("experiments.generate", f"--checkpoint={path}", *GEN))[0]
    assert_one_line((rc, stdout, stderr), f"{path} was converted by an older version of d2cache-jax",
                    f"convert the model again: python -m checkpoints_convert.llada --hf_dir={TINY} --out=")
    assert not stdout.strip()


# --- converter inputs: index paths, overlapping tensors, interrupted runs ------------------------

def _safetensors(path: str, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def test_index_outside_the_folder_and_shared_bytes(tmp_path):
    escape = model_copy(tmp_path, "escape")
    shutil.move(os.path.join(escape, "model.safetensors"), str(tmp_path / "outside.safetensors"))
    keys = read_header(str(tmp_path / "outside.safetensors"))
    write_text(os.path.join(escape, "model.safetensors.index.json"),
               json.dumps({"weight_map": dict.fromkeys(keys, "../outside.safetensors")}))
    shared = model_copy(tmp_path, "shared")
    rows = {"dtype": "F32", "shape": [2]}
    _safetensors(os.path.join(shared, "model.safetensors"),
                 {"a": {**rows, "data_offsets": [0, 8]}, "b": {**rows, "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(CheckpointError, match="b .data bytes .0, 8.. overlaps a"):
        read_header(os.path.join(shared, "model.safetensors"))
    gap = str(tmp_path / "gap.safetensors")
    _safetensors(gap, {"a": {**rows, "data_offsets": [0, 8]}, "b": {**rows, "data_offsets": [16, 24]}}, bytes(24))
    with pytest.raises(CheckpointError, match=r"data bytes \[8, 16\] belong to no tensor"):
        read_header(gap)
    results = run_all(("checkpoints_convert.llada", f"--hf_dir={escape}", f"--out={tmp_path}/o1"),
                      ("checkpoints_convert.llada", f"--hf_dir={shared}", f"--out={tmp_path}/o2"))
    assert_one_line(results[0], "model.safetensors.index.json", "'../outside.safetensors' is not a plain file name")
    assert_one_line(results[1], f"corrupt shard {shared}/model.safetensors: b", "overlaps a")


def test_interrupted_conversion_leaves_no_hidden_copy(tmp_path):
    parent = tmp_path / "models"
    parent.mkdir()
    out = str(parent / "tiny")
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys\nfrom d2cache_jax import files\n"
                               "with files.atomic_dir(sys.argv[1]) as tmp:\n"
                               "    open(os.path.join(tmp, 'half'), 'w').write('x' * 1000)\n"
                               "    os.kill(os.getpid(), signal.SIGKILL)\n", out], cwd=ROOT, env=ENV)
    assert killed.returncode == -9
    (stale,) = [p for p in parent.iterdir() if ".partial-" in p.name]
    unknown = parent / ".other.partial-abc"  # made elsewhere (no owner record): not provably stale
    unknown.mkdir()
    (unknown / "x").write_text("y")
    res = run_all(("checkpoints_convert.llada", f"--hf_dir={TINY}", f"--out={out}"))[0]
    assert_one_line(res, f"leftover partial output of an interrupted run in {parent}: {unknown}", "--clean_partial",
                    only=False)
    assert not stale.exists() and unknown.exists() and not os.path.exists(out)  # the dead writer's is gone
    res = run_all(("checkpoints_convert.llada", f"--hf_dir={TINY}", f"--out={out}", "--clean_partial"))[0]
    assert res[0] == 0, res[2]
    assert sorted(os.listdir(parent)) == ["tiny"]
    mask = files.umask()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~mask  # not mkdtemp's 0700
    for name in os.listdir(out):
        if os.path.isfile(os.path.join(out, name)):
            assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o666 & ~mask, name
    assert files.OWNER_FILE not in os.listdir(out)


def test_results_files_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        files.write_json_atomic(str(tmp_path / "r.json"), {"a": 1})
        with files.atomic_dir(str(tmp_path / "d")) as tmp:
            files.write_json(os.path.join(tmp, "x.json"), {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o664
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o775


# --- evaluate ------------------------------------------------------------------------------------

def test_evaluate_bad_samples_file_and_output_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples.jsonl").write_text('{"index": 0, "correct": true}\n{"correct": false}\n')
    with pytest.raises(ValueError, match=r"samples.jsonl:2: a samples record must be a JSON object with an "
                                         r"integer 'index'"):
        read_samples(str(run / "samples.jsonl"))
    a_file = tmp_path / "file"
    a_file.write_text("")
    common = ("experiments.evaluate", "--task=synthetic", f"--checkpoint={TINY}", "--limit=2")
    results = run_all((*common, f"--output_dir={run}"), (*common, f"--output_dir={a_file}"))
    assert_one_line(results[0], f"{run}/samples.jsonl:2: a samples record must be a JSON object")
    assert_one_line(results[1], f"--output_dir={a_file} is not a directory")
    assert (run / "samples.jsonl").read_text().count("\n") == 2 and not np.any([results[0][1], results[1][1]])
