"""The one exception type for user errors: the CLI prints it as one line and exits 2."""


class SSTMError(Exception):
    """A problem with the user's input or environment (bad id, missing file, wrong column, ...)."""


def read_text(path, who: str) -> str:
    """The UTF-8 text of a user's file (`path`, a pathlib.Path); one line naming `who` (the option or file) when it
    cannot be read or is not UTF-8, instead of an OSError / UnicodeDecodeError traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SSTMError(f"{who} {path}: not UTF-8 text (invalid byte 0x{e.object[e.start]:02x} at offset "
                        f"{e.start})") from None
    except OSError as e:
        raise SSTMError(f"{who} {path}: cannot read it ({e.strerror or e})") from None


def read_yaml(path, who: str, kind: str = "YAML"):
    """The YAML document (JSON is YAML too) of a user's file; one line naming `who` when it cannot be read or
    parsed (`kind`: what the message calls the format), instead of a YAMLError traceback."""
    import yaml

    try:
        return yaml.safe_load(read_text(path, who))
    except yaml.YAMLError as e:
        raise SSTMError(f"{who} {path}: not valid {kind} ({str(e).splitlines()[0]})") from None
