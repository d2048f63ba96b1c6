"""Golden records: one encoded record (bytes plus headers) per event and task type per
released contract version, committed under `tests/golden/<version>/`. Every later
version of the contracts must still decode them (`tests/unit/test_golden.py`), so a
consumer upgraded today still reads what a producer of an older release wrote.

`python -m tests.golden <version>` writes the records of the current contracts for a
release; written once per release and never rewritten (it refuses to overwrite)."""
