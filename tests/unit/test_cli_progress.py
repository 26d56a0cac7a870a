"""The study progress bar: a failure shows as such, whatever markup-like text its error holds."""

from rich.console import Console

from coordinator.cli.progress import study_progress


def test_a_failed_round_shows_failed_even_if_its_message_looks_like_markup():
    console = Console(record=True, width=100, force_terminal=False)
    with study_progress(console) as on_event:
        on_event({"event": "round_end", "round": "describe", "sites": ["a", "b"], "seconds": 1.0})
        on_event({"event": "failed", "message": 'stopped ([privacy] unresolved_fit = "stop") [/x]'})
    text = console.export_text()
    assert "round describe: 2 sites" in text and "failed" in text
