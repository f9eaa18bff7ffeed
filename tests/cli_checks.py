"""Shared assertion for CLI tests: a user error is one line, exit code 2, no traceback."""


def assert_user_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert needle in text
