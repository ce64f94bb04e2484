"""Fixtures for the offline deploy checks (helpers live in deploy_fakes.py)."""

from __future__ import annotations

import pytest

from deploy_fakes import NOTIFY_SECRET, PASSWORD, FakeHost


@pytest.fixture
def host(tmp_path) -> FakeHost:
    return FakeHost(tmp_path)


@pytest.fixture
def secrets(host) -> FakeHost:
    """The page password and a wait-condition handle in their root-only files."""
    host.password_file.write_text(PASSWORD + "\n")
    host.password_file.chmod(0o600)
    host.notify_file.write_text(
        f"curl -i -X POST -H 'x-acs-region-id: cn-hangzhou' "
        f"'https://ros.example.invalid/waitcondition?sig={NOTIFY_SECRET}'\n"
    )
    host.notify_file.chmod(0o600)
    return host
