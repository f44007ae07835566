"""Adapter plugins through the Python binding: lk_plugin_load of the shipped plugins (ia3.so in C,
dora.so in Swift), every deliberately broken plugin of Tests/plugins/bad_plugin.c refused with its status
and a message naming the file and both sides' values, listing, the search path (LORAKIT_PLUGIN_PATH).

The plugins come from `make test-plugins` (Tests/plugins/run.sh) in <repo>/.build/plugin-tests
(override: LORAKIT_TEST_PLUGIN_DIR); `make test-python` builds them first.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import lorakit as lk  # noqa: E402
from lorakit import LoRAKitError, Status  # noqa: E402

PLUGIN_DIR = Path(os.environ.get("LORAKIT_TEST_PLUGIN_DIR") or HERE.parents[2] / ".build" / "plugin-tests")


def plugin(name: str) -> str:
    p = PLUGIN_DIR / name
    if name.endswith(".so") and not name.startswith("missing") and not p.exists():
        pytest.fail(f"{p} does not exist: run `make test-plugins` first (it builds the test plugins)")
    return str(p)


def test_load_shipped_plugins():
    ia3 = lk.load_plugin(plugin("ia3.so"))
    dora = lk.Plugin(plugin("dora.so"))
    i = ia3.info
    assert i["name"] == "ia3" and i["abi"] == [1, 0] and i["path"] == plugin("ia3.so")
    (t,) = i["types"]
    assert t == {"name": "ia3", "description": t["description"], "peft_type": "IA3", "peft_flag": None,
                 "key_suffixes": ["ia3_l"], "merge": True, "train": True}
    assert t["description"]
    (d,) = dora.info["types"]
    assert d["name"] == "dora" and d["peft_type"] == "LORA" and d["peft_flag"] == "use_dora"
    assert set(d["key_suffixes"]) == {"lora_A.weight", "lora_B.weight", "lora_magnitude_vector"}
    assert dora.types == ["dora"] and "dora" in repr(dora)
    # The same file again is the same plugin, not a duplicate registration.
    again = lk.load_plugin(plugin("ia3.so"))
    assert again.info == i
    names = [p["name"] for p in lk.plugins()]
    assert names.index("ia3") < names.index("dora")
    # Closing a handle does not unload the plugin.
    ia3.close()
    again.close()
    assert "ia3" in [p["name"] for p in lk.plugins()]
    with pytest.raises(LoRAKitError) as e:
        ia3.info
    assert e.value.status == Status.INVALID_HANDLE


BAD = [
    ("bad_major.so", Status.ABI, ["bad_major.so", "built for plugin ABI 0.7, host has 1.0", "major versions differ"]),
    ("bad_nosymbol.so", Status.INVALID_ARGUMENT, ["bad_nosymbol.so", "no entry symbol lkp_entry"]),
    ("bad_short.so", Status.ABI, ["bad_short.so", "plugin table is 16 bytes", "bytes of ABI 1.0 (plugin says ABI 1.0)"]),
    ("bad_entry_error.so", Status.UNSUPPORTED,
     ["bad_entry_error.so", "lkp_entry failed (status -4)", "bad_entry_error: needs a host with a GPU (found none)"]),
    ("bad_dup_type.so", Status.INVALID_ARGUMENT, ["bad_dup_type.so", 'adapter type "ia3" is already registered by', "ia3.so"]),
    ("bad_dup_within.so", Status.INVALID_ARGUMENT, ["bad_dup_within.so", 'adapter type "twin" is declared twice']),
    ("bad_no_forward.so", Status.INVALID_ARGUMENT, ["bad_no_forward.so", 'adapter type "noforward" has no forward function']),
    ("bad_name.so", Status.INVALID_ARGUMENT, ["bad_name.so", 'name "Bad-Name" is not 1-63 characters of [a-z0-9_]']),
    ("bad_type_short.so", Status.ABI, ["bad_type_short.so", "adapter type 0 table is 24 bytes, below the"]),
    ("missing_file.so", Status.IO, ["missing_file.so", "cannot load:"]),
]


@pytest.mark.parametrize("name,status,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_plugin_refused(name, status, expect):
    lk.load_plugin(plugin("ia3.so"))  # for bad_dup_type
    before = lk.plugins()
    with pytest.raises(LoRAKitError) as e:
        lk.load_plugin(plugin(name))
    assert e.value.status == status, str(e.value)
    for part in expect:
        assert part in str(e.value), (part, str(e.value))
    assert lk.plugins() == before  # nothing registered


def test_bad_arguments():
    with pytest.raises(LoRAKitError) as e:
        lk.load_plugin("")
    assert e.value.status == Status.INVALID_ARGUMENT and "path is empty" in str(e.value)
    with pytest.raises(LoRAKitError) as e:
        lk.load_plugin(str(HERE))  # a folder
    assert e.value.status == Status.IO
    with pytest.raises(LoRAKitError) as e:
        lk.load_plugin(__file__)  # a file that is no library
    assert e.value.status == Status.FORMAT and "cannot load" in str(e.value)


def test_search_path_in_a_fresh_process():
    """LORAKIT_PLUGIN_PATH entries load with plugins(load_search_path=True); a broken one is listed as an
    error, the others load; two plugins with different types live together."""
    path = ":".join(plugin(n) for n in ("ia3.so", "bad_major.so", "dora.so", "shift.so"))
    code = textwrap.dedent("""
        import json, lorakit as lk
        print(json.dumps(lk.plugins(load_search_path=True)))
    """)
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), LORAKIT_PLUGIN_PATH=path, SWIFT_BACKTRACE="enable=no")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    names = [p.get("name") for p in listed if "name" in p]
    assert names[:3] == ["ia3", "dora", "shift"], listed
    errors = [p["error"] for p in listed if "error" in p]
    assert any("bad_major.so" in m and "major versions differ" in m for m in errors), errors


FIXTURES = HERE.parents[2] / "Tests" / "LoRAKitTests" / "Fixtures"


@pytest.mark.parametrize("name", ["ia3_kvd", "dora_qv"])
def test_plugin_adapter_logits_match_peft(name, tmp_path):
    """A PEFT IA³ / DoRA folder loads through lk.Adapter.load (its plugin found on the search path or
    already loaded), attaches, and gives PEFT's logits on the tiny model; saved and reloaded, the same."""
    import numpy as np
    ref = json.loads((FIXTURES / "plugins" / "tiny" / "reference.json").read_text())
    ids = ref["sequences"][0]
    want = np.array(ref[name]["logits"][0], dtype=np.float32)
    with lk.Model(FIXTURES / "train" / "model") as m, lk.Context(m) as ctx:
        a = lk.Adapter.load(m, FIXTURES / "plugins" / "tiny" / name)
        ctx.attach(a, 1.0)
        got = np.asarray(ctx.eval(ids, logits="all")).reshape(len(ids), -1)
        assert np.abs(got - want).max() < 2e-4
        a.save(tmp_path / "saved")
        with pytest.raises(LoRAKitError) as e:
            a.save(tmp_path / "x.gguf", "gguf")
        assert e.value.status == Status.UNSUPPORTED
        b = lk.Adapter.load(m, tmp_path / "saved")
        ctx.detach(a)
        ctx.attach(b, 1.0)
        ctx.reset()
        again = np.asarray(ctx.eval(ids, logits="all")).reshape(len(ids), -1)
        assert np.abs(again - want).max() < 2e-4
        ctx.set_scale(b, 0.0)
        ctx.reset()
        base = np.asarray(ctx.eval(ids, logits="all")).reshape(len(ids), -1)
        assert np.abs(base - np.array(ref["base_logits"][0], dtype=np.float32)).max() < 2e-4


def _tiny_logits(ctx, ids):
    import numpy as np
    ctx.reset()
    return np.asarray(ctx.eval(ids, logits="all")).reshape(len(ids), -1)


def test_create_plugin_adapters(tmp_path):
    """Adapter.create(adapter_type=...): a fresh IA³ (l = 1) and a fresh DoRA (B = 0, m = ‖W‖ per row) leave
    the tiny model's logits as they are; their PEFT configs hold what PEFT needs (IA³: PEFT's LLaMA
    feed-forward default, DoRA: r, lora_alpha, use_dora); bad type names and configs are refused with
    the field named."""
    import numpy as np
    lk.load_plugin(plugin("ia3.so"))
    lk.load_plugin(plugin("dora.so"))
    ref = json.loads((FIXTURES / "plugins" / "tiny" / "reference.json").read_text())
    ids = ref["sequences"][0]
    with lk.Model(FIXTURES / "train" / "model") as m, lk.Context(m) as ctx:
        base = _tiny_logits(ctx, ids)
        ia3 = lk.Adapter.create(m, targets="k,v,down", adapter_type="ia3")
        dora = lk.Adapter.create(m, rank=4, alpha=8, targets=["q", "v"], adapter_type="dora", seed=3,
                                 adapter_config={"layers_to_transform": [1]})
        for a in (ia3, dora):
            ctx.attach(a, 1.0)
            assert np.abs(_tiny_logits(ctx, ids) - base).max() < 1e-4
            ctx.detach(a)
        ia3.save(tmp_path / "ia3")
        dora.save(tmp_path / "dora")
        ci = json.loads((tmp_path / "ia3" / "adapter_config.json").read_text())
        assert ci["peft_type"] == "IA3" and ci["target_modules"] == ["k_proj", "v_proj", "down_proj"]
        assert ci["feedforward_modules"] == ["down_proj"]
        cd = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
        assert cd["peft_type"] == "LORA" and cd["use_dora"] is True and cd["r"] == 4 and cd["lora_alpha"] == 8
        assert cd["layers_to_transform"] == [1]
        # The saved DoRA loads back as a DoRA adapter with the same (base) logits.
        back = lk.Adapter.load(m, tmp_path / "dora")
        ctx.attach(back, 1.0)
        assert np.abs(_tiny_logits(ctx, ids) - base).max() < 1e-4
    with lk.Model(FIXTURES / "train" / "model") as m:
        with pytest.raises(LoRAKitError) as e:
            lk.Adapter.create(m, adapter_type="loha")
        assert e.value.status == Status.INVALID_ARGUMENT
        assert "adapter_type" in str(e.value) and '"loha" is not an adapter type' in str(e.value)
        with pytest.raises(LoRAKitError) as e:
            lk.Adapter.create(m, adapter_type="ia3", init="random")
        assert e.value.status == Status.INVALID_ARGUMENT and "params->init" in str(e.value)
        with pytest.raises(LoRAKitError) as e:
            lk.Adapter.create(m, adapter_type="dora", adapter_config={"target_modules": ["nothing"]})
        assert e.value.status == Status.INVALID_ARGUMENT and "matches no module" in str(e.value)
        with pytest.raises(TypeError):
            lk.Adapter.create(m, adapter_type="ia3", adapter_config="[1]")


@pytest.mark.parametrize("kind", ["ia3", "dora"])
def test_train_plugin_adapter(kind, tmp_path):
    """Trainer(adapter_type=...) trains IA³ / DoRA like LoRA: the loss goes down, a resumed run gives the
    losses of an uninterrupted one, the final PEFT folder loads back (as the type) and scores as the
    trainer's adapter does."""
    import numpy as np
    lk.load_plugin(plugin("ia3.so"))
    lk.load_plugin(plugin("dora.so"))
    data = FIXTURES / "train" / "data" / "text.jsonl"
    kw = dict(adapter_type=kind, targets="k,v,down" if kind == "ia3" else "q,v", rank=4, alpha=8, lr=1e-2,
              steps=6, batch=2, seq=24, seed=5, threads=2, save_every=3)
    with lk.Model(FIXTURES / "train" / "model") as m:
        full = []
        with lk.Trainer(m, data, data, **kw, out_dir=tmp_path / "full") as t:
            before = t.validation_loss()
            t.run(lambda p: full.append(p.loss))
            trained = t.adapter()
            after = t.validation_loss()
        assert len(full) == 6 and after < before - 0.05, (before, after, full)
        part = []
        with lk.Trainer(m, data, **kw, out_dir=tmp_path / "run") as t:
            t.run(lambda p: part.append(p.loss) or p.step < 3)
        with lk.Trainer(m, data, **kw, out_dir=tmp_path / "run", resume_dir=tmp_path / "run") as t:
            assert (t.steps_done, t.total_steps) == (3, 6)
            t.run(lambda p: part.append(p.loss))
        assert part == full
        cfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
        assert cfg["peft_type"] == ("IA3" if kind == "ia3" else "LORA")
        loaded = lk.Adapter.load(m, tmp_path / "run" / "adapter")
        ids = [1, 5, 9, 13, 2, 7, 4]
        with lk.Context(m) as ctx:
            ctx.attach(trained, 1.0)
            a = _tiny_logits(ctx, ids)
            ctx.detach(trained)
            ctx.attach(loaded, 1.0)
            b = _tiny_logits(ctx, ids)
        assert np.abs(a - b).max() < 1e-6


def test_cli_train_adapter_type(tmp_path):
    """`lorakit train --adapter-type ia3 --plugin ia3.so`: trains IA³ (the loss goes down), writes a PEFT IA³
    folder with PEFT's feed-forward default; `--adapter-type` names an unknown type in its error."""
    cli = os.environ.get("LORAKIT_CLI", str(HERE.parents[2] / ".build" / "release" / "lorakit-cli"))
    data = FIXTURES / "train" / "data" / "text.jsonl"
    args = [cli, "train", "--model", FIXTURES / "train" / "model", "--data", data, "--steps", "4", "--batch", "2",
            "--seq", "24", "--lr", "0.02", "--targets", "k,v,down", "--threads", "2", "--json", "--quiet"]
    r = subprocess.run([*map(str, args), "--adapter-type", "ia3", "--plugin", plugin("ia3.so"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 4 and summary["losses"][-1] < summary["losses"][0]
    cfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "IA3" and cfg["feedforward_modules"] == ["down_proj"]
    r = subprocess.run([*map(str, args), "--adapter-type", "loha"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and '--adapter-type "loha" is not an adapter type' in r.stderr, r.stderr


def test_batch_sequences_with_plugin_adapters():
    """lk_batch_set_adapters takes plugin adapters (IA³, DoRA) mixed with LoRA: each sequence's logits in
    a batch step equal those of a Context with the same adapters attached in the same order."""
    import numpy as np
    tiny = FIXTURES / "plugins" / "tiny"
    with lk.Model(FIXTURES / "train" / "model") as m:
        ia3 = lk.Adapter.load(m, tiny / "ia3_kvd")
        dora = lk.Adapter.load(m, tiny / "dora_qv")
        lora = lk.Adapter.create(m, rank=4, targets="q,v,down", init="random", seed=3)
        sets = [[(ia3, 1.0)], [(dora, 1.0), (lora, 0.5)], [], [(ia3, 0.5), (dora, 1.0), (lora, -1.0)]]
        prompts = [[5, 77, 30, 2, 51], [42, 9], [13, 26, 17, 88, 40, 3], [5, 77, 30, 2, 51]]
        with lk.BatchContext(m, max_sequences=4, n_ctx=32, n_threads=2) as bc:
            ids = [bc.add_sequence() for _ in sets]
            for i, s in zip(ids, sets):
                bc.set_adapters(i, s)
            out1 = bc.step(list(zip(ids, prompts)))
            out2 = bc.step({i: 7 for i in ids})
        for k, s in enumerate(sets):
            with lk.Context(m, n_ctx=32, n_threads=2) as c:
                for a, sc in s:
                    c.attach(a, sc)
                r1 = np.asarray(c.eval(prompts[k]))
                r2 = np.asarray(c.eval([7]))
            assert np.max(np.abs(out1[k] - r1)) < 1e-3, k
            assert np.max(np.abs(out2[k] - r2)) < 1e-3, k
        # Sequences 0 and 3 share a prompt; their adapters differ, and so do their logits.
        assert np.max(np.abs(out1[0] - out1[3])) > 1e-2
