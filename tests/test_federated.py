"""Federated fine-tuning through the secure aggregator: real party and client processes, 2 rounds each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_client.training.model import build_model, load_tokenizer
from parties.demo.federated import FedConfig, run_federated

pytestmark = pytest.mark.timeout(420)
ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, **kw) -> dict:  # type: ignore[no-untyped-def]
    base = dict(workdir=str(tmp_path / "run"), clients=3, parties=3, rounds=2, local_steps=3, batch_size=4,
                max_length=32, lr=3e-3, report=str(tmp_path / "report.json"))
    base.update(kw)
    return run_federated(FedConfig(**base), progress=False)


def _check_report(tmp_path: Path, report: dict, frac_bits: int = 24) -> None:
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["rounds"] == json.loads(json.dumps(report["rounds"]))
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keys = {"round", "train_loss", "eval_loss", "eval_perplexity", "epsilon", "delta", "agg_seconds",
            "train_seconds", "clients", "max_abs_diff_vs_plaintext"}
    for i, row in enumerate(saved["rounds"], start=1):
        assert keys <= set(row) and row["round"] == i
        assert row["eval_perplexity"] == pytest.approx(np.exp(row["eval_loss"]), rel=1e-6)
        assert row["clients"] == ["client-0", "client-1", "client-2"]
        # secure average == plaintext FedAvg of the same deltas within fixed-point error
        assert row["max_abs_diff_vs_plaintext"] is not None
        assert row["max_abs_diff_vs_plaintext"] <= 3 * 2.0**-frac_bits
        assert row["epsilon"] is None
    assert saved["rounds"][-1]["eval_loss"] < saved["initial"]["eval_loss"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_deepseek_with_byt5(tmp_path: Path) -> None:
    report = _run(tmp_path, tokenizer="byt5")
    _check_report(tmp_path, report)
    assert report["config"]["tokenizer_vocab"] == 384
    from transformers import AutoModelForCausalLM

    first = Path(report["model_dir"])
    saved = AutoModelForCausalLM.from_pretrained(first)
    assert type(saved).__name__ == "DeepseekV3ForCausalLM"
    kept = _files(first)
    # the model the first run printed, trained further in the same work dir, with clipping: the check
    # compares with the clipped deltas and passes; the first model is still there, unchanged
    out = subprocess.run([sys.executable, "-m", "parties.cli", "demo", "--model", str(first), "--workdir",
                          str(tmp_path / "run"), "--report", str(tmp_path / "report2.json"), "--clip-norm", "0.01",
                          "--clients", "3", "--parties", "2", "--rounds", "1", "--local-steps", "2",
                          "--batch-size", "4", "--max-length", "32", "--lr", "3e-3", "--tokenizer", "byt5"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and "check: PASSED" in out.stdout, out.stdout + out.stderr
    assert "FedAvg of clipped deltas" in out.stdout
    assert "\r" not in out.stdout + out.stderr and "it/s" not in out.stdout + out.stderr  # no bars in a pipe
    assert _files(first) == kept
    second = tmp_path / "run" / "global-final-2"
    assert f"model {second}" in out.stdout
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".mpc-agg-demo", "deployment", "global-final", "global-final-2"]  # scratch files are gone
    assert sum(p.stat().st_size for p in (tmp_path / "run").rglob("*") if p.is_file()) < 5 << 20
    # one FedAvg round: the model moved by the average of deltas each clipped to L2 <= 0.01
    before = dict(saved.named_parameters())
    moved = sum(float(((p.detach().double() - before[n].detach().double()) ** 2).sum())
                for n, p in AutoModelForCausalLM.from_pretrained(second).named_parameters())
    assert 0 < moved ** 0.5 <= 0.01 * (1 + 1e-6)


def test_minilm_bert_tokenizer_and_fedadam(tmp_path: Path) -> None:
    tok = load_tokenizer("bert")
    assert len(tok) == 30522 and tok.tokenize("sailing")  # the real MiniLM WordPiece vocabulary
    report = _run(tmp_path, tokenizer="bert", server_opt="fedadam", server_lr=1e-2, local_steps=2)
    _check_report(tmp_path, report)


def test_lora_only_adapters_travel(tmp_path: Path) -> None:
    report = _run(tmp_path, tokenizer="byt5", lora=True, lora_rank=4, lr=1e-2)
    _check_report(tmp_path, report)
    assert report["config"]["trainable_parameters"] < 20_000  # adapters only, not the ~100k-parameter model


def test_model_path_loads_a_saved_model_and_rejects_a_non_model(tmp_path: Path) -> None:
    tok = load_tokenizer("byt5")
    m = build_model(None, len(tok), seed=7)
    m.save_pretrained(tmp_path / "mine")
    loaded = build_model(tmp_path / "mine", len(tok))
    for (n, a), (_, b) in zip(m.named_parameters(), loaded.named_parameters()):
        assert torch.equal(a, b), n
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a model")
    out = subprocess.run([sys.executable, "-m", "parties.cli", "demo", "--model", str(tmp_path / "junk"),
                          "--workdir", str(tmp_path / "w"), "--report", str(tmp_path / "r.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert "not a Hugging Face model directory" in out.stderr and "Traceback" not in out.stderr


def test_client_refuses_a_spec_that_does_not_match_its_model(dep3, round_id: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import multiprocessing as mp
    import threading

    from safetensors.torch import save_file

    from fl_client.training.worker import WorkerConfig, client_worker
    from parties import Coordinator

    tok = load_tokenizer("byt5")
    build_model(None, len(tok)).save_pretrained(tmp_path / "init")
    with Coordinator.from_config(dep3.config) as coord:
        coord.open_round(round_id, shapes={"model.embed_tokens.weight": (10, 64)}, min_clients=3)
        save_file({"model.embed_tokens.weight": torch.zeros(10, 64)}, str(tmp_path / "w.safetensors"))
        parent, child = mp.Pipe()
        cfg = WorkerConfig(str(dep3.config), "client-0", ("some text",) * 4, str(tmp_path / "init"), "byt5", None,
                           16, 1, 2, 1e-3, 0, None)
        t = threading.Thread(target=client_worker, args=(child, cfg), daemon=True)
        t.start()
        assert parent.poll(120) and parent.recv() == ("ready",)
        parent.send(("train", round_id, str(tmp_path / "w.safetensors")))
        assert parent.poll(60)
        msg = parent.recv()
        t.join(30)
    assert msg[0] == "error" and msg[1] == "SpecMismatchError" and "refusing to train" in msg[2]


def test_noised_run_reports_epsilon_matching_an_independent_computation(tmp_path: Path) -> None:
    import math

    from dp_accounting.rdp import compute_epsilon

    import dp_accounting

    # frac_bits 17: the finest grid the exact sampler takes for z = 1, C = 0.5, 3 clients (what None picks)
    report = _run(tmp_path, tokenizer="byt5", noise_multiplier=1.0, clip_norm=0.5, frac_bits=17)
    cfg = report["config"]
    dim, z, c, s = cfg["trainable_parameters"], 1.0, 0.5, 2.0**17
    mu = (z * c * s) ** 2  # noise variance of the sum, min_clients = 3 clients each adding mu / 3
    beta = math.exp(-0.5)
    d2 = math.sqrt((c * s) ** 2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (c * s + math.sqrt(dim) / 2))
    d1 = min(d2 * d2, math.sqrt(dim) * d2)
    orders = list(range(2, 200))
    one = [a * d2**2 / (2 * mu) + min(((2 * a - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))
           for a in orders]
    for row in report["rounds"]:
        assert row["max_abs_diff_vs_plaintext"] is None and row["delta"] == 1e-5
        expected, _ = compute_epsilon(orders, [row["round"] * x for x in one], 1e-5)
        assert row["epsilon"] == pytest.approx(expected, rel=1e-3)
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(z), row["round"])
        assert acc.get_epsilon(1e-5) <= row["epsilon"] <= 1.1 * acc.get_epsilon(1e-5)
    assert report["rounds"][1]["epsilon"] > report["rounds"][0]["epsilon"]
