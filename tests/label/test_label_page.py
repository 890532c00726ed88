"""The labelling page in a real headless browser (Chromium through playwright): 20
comparisons by keyboard, with an undo, a note, and a real kill of the server half-way;
every judgement stored exactly once, as pressed; planted markup shown as text."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from label_fixtures import HTMLISH, XSS_IMG, XSS_SCRIPT, sample_rows, write_eval_dir

playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[label]' (playwright)")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("headless Chromium not installed (Debian: apt-get install chromium; scripts/setup.sh does it)")


def target_of(i: int) -> str:
    """What the test labeller prefers for sample i: the policy (a), the reference (b), a tie."""
    return ("a", "b", "tie")[i % 3]


def test_label_by_keyboard_kill_restart_exactly_once(tmp_path, label_server):
    n = 20
    rows = sample_rows(n)
    index = {r["prompt"]: i for i, r in enumerate(rows)}
    ev = write_eval_dir(tmp_path / "eval", n)
    db = tmp_path / "labels.sqlite"
    srv = label_server(db, [ev])
    want: dict[int, str] = {}       # sample -> the answer picked (a = policy, b = reference, tie)
    left_seen: dict[int, str] = {}  # sample -> which answer was on the left
    judged: list[int] = []
    seen_markup = False
    sp = playwright.sync_playwright().start()
    try:
        browser = sp.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        dialogs, errors = [], []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        expect = playwright.expect

        def progress(k: int) -> None:
            expect(page.locator("#progress")).to_have_text(f"{k} / {n} judged", timeout=15000)

        def current() -> tuple[int, str, str]:
            i = index[page.text_content("#prompt")]
            return i, page.text_content("#left"), page.text_content("#right")

        def judge(k: int, flip: bool = False) -> None:
            """Judge the item on screen by keyboard; ``k`` judged before it."""
            nonlocal seen_markup
            progress(k)
            i, left, right = current()
            r = rows[i]
            assert {left, right} == {r["policy"], r["reference"]}
            if i == 3:  # the planted markup, on screen as the very characters of the sample
                seen_markup = True
                assert XSS_SCRIPT in page.text_content("#prompt")
                assert XSS_IMG in (left + right) and HTMLISH in (left + right)
                assert page.locator("img").count() == 0 and page.locator("main b").count() == 0
                assert page.evaluate("window.__xss") is None
            left_seen[i] = "a" if left == r["policy"] else "b"
            t = target_of(i + flip)
            if t == "tie":
                key = "t"
            else:
                on_left = left_seen[i] == t
                key = ("a" if on_left else "b") if i % 2 else ("ArrowLeft" if on_left else "ArrowRight")
            page.keyboard.press(key)
            want[i] = t
            judged.append(i)
            progress(k + 1)

        page.goto(srv.url)
        page.fill("#name", "alice")
        page.keyboard.press("Enter")
        for k in range(5):
            judge(k)
        # undo the fifth: it comes back on screen; judge it again, the other way
        i_undone = judged[-1]
        page.keyboard.press("u")
        progress(4)
        assert current()[0] == i_undone
        judge(4, flip=True)
        # a note, typed after pressing n (keys in the note are text, not shortcuts)
        progress(5)
        noted = current()[0]
        page.keyboard.press("n")
        page.keyboard.type("tab A <b>rambles</b>")
        page.keyboard.press("Escape")
        judge(5)
        for k in range(6, 10):
            judge(k)

        # kill the server (SIGKILL) with an item on screen; a press now is not saved
        progress(10)
        before = current()
        srv.kill()
        page.keyboard.press("a")
        expect(page.locator("#status")).to_contain_text("not saved", timeout=15000)
        srv.start()
        page.reload()
        progress(10)  # resumed where alice stopped: the same item, the same sides
        assert current() == before
        for k in range(10, n):
            judge(k)
        expect(page.locator("#done")).to_be_visible()
        assert seen_markup
        assert page.evaluate("window.__xss") is None and dialogs == [] and errors == []
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    finally:
        sp.stop()

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    all_rows = con.execute("SELECT item_id, labeller, left_side, choice, winner, note, undone_at FROM judgements").fetchall()
    prompt_of = dict(con.execute("SELECT item_id, prompt FROM items").fetchall())
    live = [r for r in all_rows if r[6] is None]
    assert len(all_rows) == n + 1 and len(live) == n  # 20 live judgements + the one undone
    assert len({r[0] for r in live}) == n and {r[1] for r in live} == {"alice"}
    undone = [r for r in all_rows if r[6] is not None]
    assert index[prompt_of[undone[0][0]]] == i_undone and undone[0][4] == target_of(i_undone)
    for item, _, left_side, choice, winner, note, _ in live:
        i = index[prompt_of[item]]
        assert winner == want[i], i
        assert left_side == left_seen[i], i
        # what was pressed, read back through what was on the left
        assert choice == ("tie" if winner == "tie" else "left" if winner == left_side else "right")
        assert note == ("tab A <b>rambles</b>" if i == noted else "")


def test_page_with_an_access_token(tmp_path, label_server):
    """With a token the page works when its address carries it (the script sends it with
    every request), and says why nothing loads when it does not."""
    ev = write_eval_dir(tmp_path / "eval", 3)
    db = tmp_path / "labels.sqlite"
    token = "tok-0123456789abcdef"
    srv = label_server(db, [ev], extra=("--token", token))
    sp = playwright.sync_playwright().start()
    try:
        browser = sp.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(srv.url)  # no token: the page loads, the data does not
        page.fill("#name", "bob")
        page.click("#start")
        playwright.expect(page.locator("#status")).to_contain_text("missing or wrong access token")
        page.goto(srv.url + "?token=" + token)  # the name is remembered
        playwright.expect(page.locator("#progress")).to_have_text("0 / 3 judged")
        page.click("#pick-tie")  # the mouse works too
        playwright.expect(page.locator("#progress")).to_have_text("1 / 3 judged")
        page.keyboard.press(" ")  # the clicked button gave its focus back: Space does nothing
        page.wait_for_timeout(300)
        playwright.expect(page.locator("#progress")).to_have_text("1 / 3 judged")
        browser.close()
    finally:
        sp.stop()
    rows = sqlite3.connect(db).execute("SELECT labeller, choice FROM judgements").fetchall()
    assert rows == [("bob", "tie")]
