import time

import pytest

from pipelines.strict_yaml import MAX_BYTES, YamlError, load_yaml


def test_plain_yaml_loads():
    assert load_yaml("a: 1\nb: [x, 2.5, true]\nc: ~") == {"a": 1, "b": ["x", 2.5, True], "c": None}


def test_duplicate_keys_are_refused_with_lines():
    with pytest.raises(YamlError, match=r"duplicate key 'seed' at line 3 \(first at line 1\)"):
        load_yaml("seed: 1\nname: x\nseed: 2\n")


@pytest.mark.parametrize("text", ["NO", "yes", "off", "012345", "0o17", "0x1f"])
def test_ambiguous_scalars_stay_strings(text):
    assert load_yaml(f"v: {text}") == {"v": text}


def test_python_tags_are_refused():
    with pytest.raises(YamlError, match="python/object"):
        load_yaml('x: !!python/object/apply:os.system ["touch /tmp/owned"]')


def test_alias_bomb_is_refused_fast():
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = "\n".join(lines)
    assert len(text) < 1000
    start = time.perf_counter()
    with pytest.raises(YamlError, match="expands to more than"):
        load_yaml(text)
    assert time.perf_counter() - start < 0.1


def test_small_aliases_are_fine():
    assert load_yaml("a: &x {p: 1}\nb: *x") == {"a": {"p": 1}, "b": {"p": 1}}


def test_oversized_document_is_refused():
    with pytest.raises(YamlError, match="larger than"):
        load_yaml("x: " + "a" * MAX_BYTES)
