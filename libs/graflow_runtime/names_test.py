from graflow_runtime.names import QUEUE_NAME_MAX, is_node_id, is_queue_name, is_task_type, queue_name_problem


def test_queue_names_with_whitespace_or_nothing_are_rejected() -> None:
    assert queue_name_problem("gpu-large.v2") is None
    assert "empty" in (queue_name_problem("") or "")
    assert "whitespace" in (queue_name_problem("a b") or "")
    assert "newline" in (queue_name_problem("a\nb") or "")
    assert "longer than" in (queue_name_problem("q" * 500) or "")


def test_queue_names_are_at_most_128_characters() -> None:
    assert QUEUE_NAME_MAX == 128
    assert is_queue_name("q" * 128)
    assert not is_queue_name("q" * 129)


def test_node_ids_are_1_to_128_letters_digits_underscores_dashes_or_dots() -> None:
    assert is_node_id("fetch_2.a-b")
    assert is_node_id("x" * 128)
    assert [bad for bad in ("", "x" * 129, "has space", "a/b", "naïve", "a\n") if is_node_id(bad)] == []


def test_task_types_are_1_to_256_characters_without_whitespace() -> None:
    assert is_task_type("module.Task:run")
    assert is_task_type("t" * 256)
    assert [bad for bad in ("", "t" * 257, "two words", "tab\t") if is_task_type(bad)] == []
