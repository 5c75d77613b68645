"""The web pages of `ml-dash serve` in a real headless Chromium (Debian's chromium and
chromedriver, driven with Selenium over WebDriver), against a store filled by the main job
(`examples/training_checkpoints`) and by the real ml-dash 0.11 client through the server.

Screenshots of every tab go to target/web-shots/ (not committed). Any console error fails."""

import hashlib
import os
import re
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from conftest import REPO, TARGET, cli, client_config, make_token, open_experiment, upload

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SHOTS = TARGET / "web-shots"
XSS_NAME = "<img src=x onerror=alert(1)>.txt"


def png(width, height):
    """A small RGB PNG (a gradient), made without any imaging library."""
    rows = b"".join(
        b"\x00" + b"".join(bytes([x * 255 // width, y * 255 // height, 128]) for x in range(width))
        for y in range(height)
    )

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture
def browser(workdir):
    downloads = workdir / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--window-size=1280,900",
              f"--user-data-dir={workdir / 'chrome-profile'}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    d.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    d.downloads = downloads
    try:
        yield d
    finally:
        d.quit()


def wait(d, what, timeout=20):
    """Wait until `what(d)` is true (pages load after a click on their own time)."""
    return WebDriverWait(d, timeout, poll_frequency=0.05).until(lambda d: what(d))


def console_errors(d):
    return [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]


def no_alert(d):
    try:
        d.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def shot(d, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(SHOTS / f"{name}.png"))


def fill_with_client(url, workdir):
    """What a training job writes through the server with the ml-dash client."""
    from ml_dash import Experiment

    src = workdir / "src"
    src.mkdir()
    (src / "loss_curve.png").write_bytes(png(64, 48))
    (src / "config.json").write_text('{"model": {"arch": "resnet", "layers": 18}, "lr": 0.1}')
    (src / "results.csv").write_text("epoch,accuracy\n1,0.5\n2,0.7\n3,0.8\n")
    (src / "README.md").write_text("# Web run\n\nA *run* for the <b>browser</b> test.\n")
    (src / XSS_NAME).write_text("a file whose name is markup")
    (src / "plots.md").write_text("# About the plots\n")
    exp = Experiment(prefix="alice/vision/web-run", dash_url=url, dash_root=None,
                     readme="browser test", tags=["web"])
    with exp.run as e:
        e.params.set(lr=0.1, model={"arch": "resnet", "layers": 18}, optimizer={"name": "sgd"})
        e.logs.info("training started")
        e.log("learning rate warm-up", level="warn")
        e.logs.error("a failing batch, skipped")
        for step in range(300):
            e.metrics("train").log(loss=2.0 / (1 + step * 0.05), accuracy=min(0.99, step / 300), step=step)
        for epoch in range(10):
            e.metrics("eval").log(accuracy=0.5 + epoch * 0.04, epoch=epoch, step=epoch * 30)
        e.files("plots").upload(str(src / "loss_curve.png"))
        e.files("plots").upload(str(src / "plots.md"), to="README.md")
        e.files().upload(str(src / "config.json"), tags=["config"])
        e.files().upload(str(src / "results.csv"))
        e.files().upload(str(src / "README.md"))
        e.files("odd").upload(str(src / XSS_NAME))
        e.flush()
    return src


def test_pages_in_a_real_browser(make_server, workdir, monkeypatch, browser):
    root = workdir / "store"
    token = make_token(root, "web")
    # The main job, on the store the server will serve.
    job = TARGET / "release" / "examples" / "training_checkpoints"
    if not job.exists():
        subprocess.run(["cargo", "build", "--release", "--example", "training_checkpoints"],
                       cwd=REPO, check=True)
    subprocess.run([str(job)], env={**os.environ, "ML_DASH_ROOT": str(root)}, check=True,
                   capture_output=True)
    cli(root, "verify")
    server = make_server(root=root, token=token, log_name="serve.log")
    client_config(workdir / "client-config", token, monkeypatch)
    src = fill_with_client(server.url, workdir)
    d = browser

    # Without a session: the sign-in form; a wrong token is refused; the right one signs in
    # and comes back to the page asked for.
    d.get(server.url + "/alice/vision/web-run")
    assert d.find_elements(By.NAME, "token"), d.page_source[:500]
    d.find_element(By.NAME, "token").send_keys("not-a-token")
    d.find_element(By.CSS_SELECTOR, "section.signin button").click()
    wait(d, lambda d: "not valid" in d.page_source)
    d.find_element(By.NAME, "token").send_keys(token)
    d.find_element(By.CSS_SELECTOR, "section.signin button").click()
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "nav.tabs"))
    assert d.current_url.endswith("/alice/vision/web-run"), d.current_url
    cookie = d.get_cookie("mldash_session")
    assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", cookie

    # The list: both experiments, the main job's and the client's.
    d.get(server.url + "/")
    names = [a.text for a in d.find_elements(By.CSS_SELECTOR, "a.exp")]
    assert "resnet-training" in names and "web-run" in names, names
    shot(d, "experiments")

    # Files: the README rendered (its HTML shown as text), the XSS name as text, no alert.
    d.get(server.url + "/alice/vision/web-run?tab=files")
    md = d.find_element(By.CSS_SELECTOR, "div.markdown")
    assert md.find_element(By.TAG_NAME, "h1").text == "Web run"
    assert "<b>browser</b>" in md.text
    # A folder's README under the folder's name.
    folder_readme = d.find_element(By.XPATH, "//h3[@class='dir' and text()='/plots']/following-sibling::section[1]")
    assert folder_readme.find_element(By.TAG_NAME, "h1").text == "About the plots"
    summaries = [s.text for s in d.find_elements(By.CSS_SELECTOR, "details.file summary")]
    assert "/odd/" + XSS_NAME in summaries, summaries
    assert not d.find_elements(By.CSS_SELECTOR, "img[src='x']")
    assert no_alert(d)
    shot(d, "files")

    # Preview of the image: it loads.
    link = d.find_element(By.XPATH, "//details[summary[contains(., 'loss_curve.png')]]//a[@class='preview']")
    link.click()
    img = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "figure.preview img"))[0]
    wait(d, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 64)
    shot(d, "preview")

    # Download through the page (the session cookie authorizes it) and compare the checksum.
    d.get(server.url + "/alice/vision/web-run?tab=files")
    row = d.find_element(By.XPATH, "//details[summary[contains(., 'results.csv')]]")
    want = row.find_element(By.CSS_SELECTOR, "code[title]").get_attribute("title")
    row.find_element(By.CSS_SELECTOR, "a.download").click()
    deadline = time.time() + 30
    got = None
    while time.time() < deadline:
        done = [p for p in d.downloads.iterdir() if not p.name.endswith(".crdownload")]
        if done:
            got = done[0]
            break
        time.sleep(0.1)
    assert got is not None, "the download did not finish"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == want
    assert got.read_bytes() == (src / "results.csv").read_bytes()

    # Metrics: one chart per metric, one line per field; the deep link survives a reload.
    d.get(server.url + "/alice/vision/web-run?tab=metrics")
    charts = {f.get_attribute("data-metric"): f for f in d.find_elements(By.CSS_SELECTOR, "figure.metric")}
    assert set(charts) == {"train", "eval"}, set(charts)
    train = charts["train"].find_elements(By.CSS_SELECTOR, "polyline.series")
    assert sorted(p.get_attribute("data-label") for p in train) == ["accuracy", "loss"]
    assert all(int(p.get_attribute("data-n")) <= 2000 for p in train)
    d.refresh()
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.metric")) == 2)
    # Hover shows values.
    svg = d.find_element(By.CSS_SELECTOR, "figure.metric[data-metric='train'] svg")
    webdriver.ActionChains(d).move_to_element(svg).perform()
    hover = wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "figure.metric[data-metric='train'] .hover").text)
    assert "loss" in hover and "accuracy" in hover, hover
    shot(d, "metrics")

    # Tabs by clicking.
    for tab, check in [("params", "table.params"), ("logs", "table.logs"), ("storage", "table.storage")]:
        d.find_element(By.CSS_SELECTOR, f"nav.tabs a[data-tab='{tab}']").click()
        wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "nav.tabs a.active").get_attribute("data-tab") == tab)
        assert d.find_elements(By.CSS_SELECTOR, check), tab
        shot(d, tab)
    d.get(server.url + "/alice/vision/web-run?tab=logs&level=error")
    levels = [c.text for c in d.find_elements(By.CSS_SELECTOR, "table.logs span.level")]
    assert levels == ["error"], levels

    # The main job's checkpoints: the storage tab shows their versions and codecs.
    d.get(server.url + "/local/cv/resnet-training?tab=storage")
    rows = d.find_elements(By.CSS_SELECTOR, "table.storage tbody tr")
    assert len(rows) >= 10, len(rows)
    shot(d, "storage-checkpoints")
    d.get(server.url + "/-/store")
    assert "Saving" in d.page_source
    stats = d.find_element(By.CSS_SELECTOR, "dl.stats").text
    assert re.search(r"Last verify\s+ok: \d+ versions", stats), stats
    shot(d, "store")

    # A tag change through the page's form (with its CSRF token) reaches the store.
    d.get(server.url + "/alice/vision/web-run?tab=files")
    form = d.find_element(By.XPATH, "//details[summary[contains(., 'config.json')]]//form[contains(@class, 'tags-form')]")
    box = form.find_element(By.NAME, "tags")
    box.clear()
    box.send_keys("config, best")
    form.find_element(By.TAG_NAME, "button").click()
    wait(d, lambda d: d.find_elements(By.XPATH, "//details[summary[contains(., 'config.json')]]//span[@class='tag' and text()='best']"))
    assert d.current_url.endswith("?tab=files")
    tags = [t.text for t in d.find_elements(By.XPATH, "//details[summary[contains(., 'config.json')]]//span[@class='tag']")]
    assert tags[:2] == ["config", "best"], tags

    assert no_alert(d)
    errors = console_errors(d)
    assert errors == [], "\n".join(e["message"] for e in errors)


def test_sessions_csrf_and_headers(server):
    """Without a browser: the sign-in form sets an HttpOnly, SameSite=Strict cookie; a form
    without this session's CSRF token is refused and changes nothing; the cookie reads through
    the API (a download link) but never writes through it; every page carries the CSP."""
    import httpx

    base = server.url
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as c:
        r = c.get("/")
        assert r.status_code == 200 and 'name="token"' in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp, csp
        assert r.headers["x-content-type-options"] == "nosniff"
        set_cookie = r.headers["set-cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie, set_cookie
        csrf = r.text.split('name="csrf" value="')[1].split('"')[0]
        # A wrong token: the form again, no session.
        r = c.post("/-/login", data={"token": "nope", "csrf": csrf, "next": "/"})
        assert r.status_code == 200 and "not valid" in r.text
        # A login form from another session (its CSRF token) is refused.
        r = c.post("/-/login", data={"token": server.token, "csrf": "0" * 64, "next": "/"})
        assert "expired" in r.text
        # Signed in; an absolute URL as `next` is not followed off the server.
        r = c.post("/-/login", data={"token": server.token, "csrf": csrf, "next": "//evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/", r.headers
        # Upload a file with the API (bearer), then try to change it through the pages.
        h = {"Authorization": f"Bearer {server.token}"}
        exp = c.post("/api/namespaces/ns/nodes", headers=h,
                     json={"type": "EXPERIMENT", "name": "e", "projectSlug": "p", "parentId": "ROOT"})
        assert exp.status_code in (200, 201), exp.text
        page = c.get("/ns/p/e?tab=files")
        assert page.status_code == 200
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        # The session's cookie does not authorize API writes (another site could send them).
        r = c.post("/api/namespaces/ns/nodes", json={"type": "EXPERIMENT", "name": "x",
                                                      "projectSlug": "p", "parentId": "ROOT"})
        assert r.status_code == 401, r.text
        # Nor a page form without the CSRF token.
        r = c.post("/-/tags", data={"csrf": "f" * 64, "id": "1000000000000000000", "tags": "x"})
        assert r.status_code == 403, r.text
        # With its CSRF token, the page's delete form deletes (what the API then shows).
        with server.http() as api:
            e = open_experiment(api, "ns", "p", "e2")
            r = upload(api, e, "gone.txt", b"to delete")
            assert r.status_code == 201, r.text
            node_id = r.json()["node"]["id"]
        r = c.post("/-/delete", data={"csrf": "f" * 64, "id": node_id})
        assert r.status_code == 403
        r = c.post("/-/delete", data={"csrf": csrf, "id": node_id})
        assert r.status_code == 303 and r.headers["location"].endswith("/ns/p/e2?tab=files"), r.headers
        assert "gone.txt" not in c.get("/ns/p/e2?tab=files").text
        # Sign out needs the token too, and ends the session.
        r = c.post("/-/logout", data={"csrf": csrf})
        assert r.status_code == 303
        assert 'name="token"' in c.get("/ns/p/e").text


def test_cross_origin_writes_and_rebinding_are_refused(make_server, workdir):
    """A page of another site cannot write through the API (its browser sends `Origin`), and
    a store without tokens answers only loopback host names (no DNS rebinding)."""
    import httpx

    s = make_server(root=workdir / "open")
    body = {"type": "EXPERIMENT", "name": "e", "projectSlug": "p", "parentId": "ROOT"}
    with httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post("/api/namespaces/ns/nodes", json=body, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["code"] == "CROSS_ORIGIN", r.text
        r = c.post("/graphql", content=b'{"query": "{ me { username } }"}',
                   headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
        assert r.status_code == 403, r.text
        # The same origin (a page of this server), and clients that send no Origin, may.
        host = s.url.split("://", 1)[1]
        r = c.post("/api/namespaces/ns/nodes", json=body, headers={"Origin": f"http://{host}"})
        assert r.status_code in (200, 201), r.text
        for h in ["evil.example", f"evil.example:{host.split(':')[1]}"]:
            r = c.get("/", headers={"Host": h})
            assert r.status_code == 403 and r.json()["code"] == "HOST", r.text
        assert c.get("/", headers={"Host": f"localhost:{host.split(':')[1]}"}).status_code == 200
        assert c.get("/health").status_code == 200
