"""Schema-driven fuzzing of the live server: schemathesis generates requests for every
operation of our own /openapi.json and checks every answer against the document."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
SEED = os.environ.get("FUZZ_SEED", "20261128")
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_fuzzed_requests_get_only_documented_answers_and_never_a_5xx(server, tmp_path):
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"http://127.0.0.1:{server.port}/openapi.json",
            "--header",
            f"Authorization: Bearer {server.client.token}",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            SEED,
            "--workers",
            "2",
            "--no-color",
        ],
        cwd=tmp_path,  # schemathesis keeps its example database in the working folder
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated.group(1)) >= 9 * 10, output[-3000:]
    print(f"fuzz: {generated.group(0)} requests over every operation, seed {SEED}")
    server.verify()
