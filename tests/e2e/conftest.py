# SCRATCH (delete before handing over): reuse /tmp/sess8 while iterating
from pathlib import Path
import pytest
@pytest.fixture(scope="session")
def trained_workdir() -> Path:
    return Path("/tmp/sess8")
