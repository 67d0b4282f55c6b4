"""What the toolkit says about the machine it runs on: a timing is only a figure of its machine, and bf16 is fast only
where the CPU runs it natively."""
import json
import shutil
import sys

import torch
from conftest import ROOT, load_script

import engine

sys.path.insert(0, str(ROOT / "benchmarks"))
import recipes  # noqa: E402


def test_the_device_line_names_the_cpu_its_instructions_threads_and_bf16(monkeypatch):
    cpu = torch.device("cpu")
    line = engine.describe_device(cpu)
    assert line.startswith("cpu (") and f", {torch.backends.cpu.get_cpu_capability()}, " in line
    threads = torch.get_num_threads()
    assert f", {threads} thread{'s' * (threads != 1)}, " in line
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert ", 1 thread, " in engine.describe_device(cpu)
    # bf16 as --amp auto sees it: a CPU without native bf16 trains in fp32.
    assert line.endswith(", native bf16)" if engine.bf16_supported(cpu) else ", no native bf16)")
    monkeypatch.setattr(engine, "bf16_supported", lambda device: False)
    assert engine.describe_device(cpu).endswith(", no native bf16)")
    monkeypatch.setattr(engine, "cpu_name", lambda: "")
    assert engine.describe_device(cpu).startswith("cpu (CPU, ")


def test_a_results_file_reuses_only_the_runs_timed_on_this_machine(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    rows = [{"name": "default", "seed": 0, "machine": "here", "wall_s": 87.3},
            {"name": "default", "seed": 1, "machine": "there", "wall_s": 700.0},
            {"name": "fast", "seed": 0, "wall_s": 76.2}]  # from before rows named their machine
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert recipes.finished_runs(str(results), "here") == {("default", 0): rows[0]}
    assert f"note: 2 runs in {results} were timed on another machine (or one not recorded), not here: run again " \
        "here" in capsys.readouterr().err
    assert recipes.finished_runs(str(results), "there") == {("default", 1): rows[1]}
    assert recipes.finished_runs(str(tmp_path / "none.jsonl"), "here") == {}
    assert capsys.readouterr().err.count("note: 2 runs") == 1  # 'there' set aside two too; no file: nothing


def test_bf16_asked_for_on_a_cpu_without_it_is_warned_of(trained, tiny_data, tmp_path, monkeypatch, capsys):
    cpu = torch.device("cpu")
    monkeypatch.setattr(engine, "bf16_supported", lambda device: False)
    assert engine.amp_warning("bf16", cpu).startswith("bf16 runs in software on this CPU, which has no native bf16")
    assert engine.amp_warning("auto", cpu) is None and engine.amp_warning("off", cpu) is None
    ckpt = str(trained / "checkpoints" / "best.pth")
    assert load_script("test").main(["--ckpt", ckpt, "--amp", "bf16", "--out-dir", str(tmp_path)]) == 0
    assert "warning: bf16 runs in software on this CPU, which has no native bf16" in capsys.readouterr().err
    face = next((tiny_data / "test" / "Happy").iterdir())
    assert load_script("predict").main([str(face), "--no-detect", "--ckpt", ckpt, "--amp", "bf16", "--out-dir",
                                        str(tmp_path / "predict"), "--no-progress"]) == 0
    assert "warning: bf16 runs in software on this CPU" in capsys.readouterr().err  # the API's warning, as a line
    # An exported model runs as exported: bf16 is unused there, not slow.
    assert load_script("export").main(["--ckpt", ckpt, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert load_script("test").main(["--ckpt", str(tmp_path / "m.onnx"), "--amp", "bf16", "--data", str(tiny_data),
                                     "--out-dir", str(tmp_path / "onnx")]) == 0
    err = capsys.readouterr().err
    assert f"bf16 is left unused: {tmp_path / 'm.onnx'} is an exported model" in err and "runs in software" not in err
    shutil.copy(tmp_path / "m.onnx", tmp_path / "n.onnx")  # an ensemble of two: named, not shown as a list
    assert load_script("test").main(["--ckpt", str(tmp_path / "m.onnx"), str(tmp_path / "n.onnx"), "--amp", "bf16",
                                     "--data", str(tiny_data), "--out-dir", str(tmp_path / "two")]) == 0
    assert f"bf16 is left unused: {tmp_path / 'm.onnx'}, {tmp_path / 'n.onnx'} are exported models" in \
        capsys.readouterr().err
    monkeypatch.setattr(engine, "bf16_supported", lambda device: True)
    assert engine.amp_warning("bf16", cpu) is None
