from aigw_common.proto import default_dir, render


def test_proto_is_current():
    """proto/ is generated from the msgspec Structs; run `make proto` after changing a message."""
    d = default_dir()
    rendered = render()
    on_disk = {p.name: p.read_bytes() for p in d.glob("*.schema.json")}
    stale = sorted(n for n, b in rendered.items() if on_disk.get(n) != b)
    extra = sorted(set(on_disk) - set(rendered))
    assert not stale and not extra, f"proto/ is stale (run `make proto`): changed={stale} extra={extra}"
