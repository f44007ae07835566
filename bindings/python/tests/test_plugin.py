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
