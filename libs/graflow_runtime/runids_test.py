from graflow_runtime.runids import is_run_id, new_run_id, run_id_problem


def test_run_ids_are_26_characters_unique_and_sort_by_creation_time():
    earlier = [new_run_id(1_700_000_000_000) for _ in range(100)]
    later = new_run_id(1_700_000_000_001)
    assert len(set(earlier)) == 100
    assert all(len(r) == 26 and is_run_id(r) for r in earlier)
    assert max(earlier) < later


def test_malformed_run_ids_are_explained():
    assert run_id_problem("") == "run_id is empty"
    assert "malformed" in run_id_problem("01HX-not-a-run-id")
    assert run_id_problem(new_run_id()) is None
