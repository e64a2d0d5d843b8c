#!/usr/bin/env python3
"""The console in a real browser: headless Chromium from the distribution, driven by Selenium,
against a real server started here (`invicta server --demo`, as `make run` starts it).

It walks a new tenant's journey (sign in with the demo key the server prints, the demo worker's
oplog, upload with progress, a generated invoke form, live logs, workers, usage, keys) and the
operator's (tenants, plans, invoices, the cluster), checks accessibility basics on every page
(labels, names, contrast, keyboard focus) and writes a screenshot of each page.

    run.py <invicta binary> <components dir> <screenshots dir>
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT_S = 30

# Accessibility basics, computed in the page: every control is labelled, every button and link
# named, text contrasts at 4.5:1 or more with what is behind it, one h1, a language.
A11Y_SCRIPT = r"""
const problems = [];
const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
const named = (el) => (el.getAttribute('aria-label') || '').trim() || el.getAttribute('aria-labelledby');
for (const el of document.querySelectorAll('input, select, textarea')) {
  if (!visible(el) || el.type === 'hidden') continue;
  if (!(el.labels && el.labels.length) && !named(el)) problems.push(`unlabelled ${el.tagName} ${el.name || el.id}`);
}
for (const el of document.querySelectorAll('button, a[href]')) {
  if (!visible(el)) continue;
  if (!el.textContent.trim() && !named(el)) problems.push(`unnamed ${el.tagName}`);
}
for (const el of document.querySelectorAll('meter, progress')) {
  if (!(el.labels && el.labels.length) && !named(el)) problems.push(`unlabelled ${el.tagName}`);
}
for (const el of document.querySelectorAll('svg[role=img]')) {
  if (!named(el)) problems.push('an image without a description');
}
if (document.querySelectorAll('h1').length !== 1) problems.push(`${document.querySelectorAll('h1').length} h1 elements`);
if (!document.documentElement.lang) problems.push('no lang on <html>');
const rgb = (s) => { const m = s.match(/[\d.]+/g).map(Number); return { r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1 }; };
const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
const behind = (el) => { for (let e = el; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor); if (c.a > 0.5) return c; }
  return { r: 255, g: 255, b: 255, a: 1 }; };
let checked = 0;
for (const el of document.querySelectorAll('body *')) {
  if (!visible(el) || el.closest('svg')) continue;
  const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!text || el.disabled) continue;
  const style = getComputedStyle(el);
  if (style.visibility === 'hidden' || Number(style.opacity) < 0.5) continue;
  const fg = lum(rgb(style.color));
  const bg = lum(behind(el));
  const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
  checked += 1;
  if (ratio < 4.5) problems.push(`contrast ${ratio.toFixed(2)}:1 on ${el.tagName} "${el.textContent.trim().slice(0, 30)}"`);
}
if (!checked) problems.push('no text checked for contrast');
return problems;
"""


def wait_optimized(base, key, component):
    """Waits until the component's optimized code is ready (an upload runs at once on the
    baseline tier, and a worker on it leaves its instance when that code comes)."""
    deadline = time.monotonic() + 300
    while True:
        request = urllib.request.Request(f"{base}/v1/components/{component}",
                                         headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            if json.load(reply).get("code") == "optimized":
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{component} was not optimized within 300 s")
        time.sleep(0.05)


class Journey:
    def __init__(self, driver, base, shots):
        self.driver = driver
        self.base = base
        self.shots = shots
        self.failures = []
        self.pages = 0

    def wait(self, condition, what):
        try:
            return WebDriverWait(self.driver, WAIT_S).until(condition)
        except TimeoutException:
            self.shot(f"timeout-{re.sub('[^a-z0-9]+', '-', what.lower())[:40]}")
            alert = self.text("#alert")
            raise AssertionError(f"waited {WAIT_S} s for {what}" + (f" (the page says: {alert})" if alert else ""))

    def text(self, css):
        # Read in the page, in one step: a view redrawn meanwhile cannot leave a stale element.
        return self.driver.execute_script(
            "const el = document.querySelector(arguments[0]); return el ? el.innerText : '';", css
        )

    def click(self, xpath, what):
        """Clicks an element once it is there: views are drawn after their data arrives."""

        def clicked(d):
            try:
                d.find_element(By.XPATH, xpath).click()
                return True
            except (NoSuchElementException, StaleElementReferenceException, ElementNotInteractableException):
                return False

        self.wait(clicked, what)

    def wait_text(self, css, needle):
        self.wait(lambda d: needle in self.text(css), f"`{needle}` in {css}")

    def heading(self, words):
        self.wait_text("main h1", words)

    def go(self, fragment):
        self.driver.get(f"{self.base}/console#{fragment}")

    def shot(self, name):
        self.driver.save_screenshot(os.path.join(self.shots, f"{name}.png"))

    def page_done(self, name):
        """The page is drawn: its accessibility is checked and its screenshot taken."""
        self.pages += 1
        self.shot(name)
        problems = self.driver.execute_script(A11Y_SCRIPT)
        if problems:
            self.failures.append(f"{name}: " + "; ".join(problems[:8]))

    def field(self, label):
        """The control a label names, found as a user would: by the label's words."""
        labels = self.wait(
            lambda d: d.find_elements(By.XPATH, f"//main//label[normalize-space(text())='{label}']"),
            f"a field labelled {label!r}",
        )
        return self.driver.find_element(By.ID, labels[-1].get_attribute("for"))

    def button(self, words):
        return self.wait(
            EC.element_to_be_clickable((By.XPATH, f"//main//button[normalize-space(.)='{words}']")),
            f"the button {words!r}",
        )

    def sign_in(self, key):
        self.go("/signin")
        self.heading("Sign in")
        # The key field has the focus: a keyboard user types the key and presses Enter.
        active = self.driver.switch_to.active_element
        assert active.get_attribute("type") == "password", "the key field does not have the focus"
        active.clear()
        active.send_keys(key + Keys.ENTER)

    def sign_out(self):
        self.click("//header//button[normalize-space(.)='Sign out']", "the sign-out button")
        self.heading("Sign in")


def tenant_journey(j, demo_key, components):
    d = j.driver
    j.sign_in("not-a-key")
    j.wait_text("#alert", "keys look like")
    j.page_done("01-sign-in-refused")
    j.sign_in(demo_key)
    j.heading("Components")
    j.wait_text("main table", "counter")
    j.page_done("02-components")

    # Keyboard focus: Tab moves through the page, and the focused element shows an outline.
    keyboard = ActionChains(d)
    keyboard.send_keys(Keys.TAB).perform()
    seen = set()
    for _ in range(6):
        active = d.switch_to.active_element
        seen.add(active.tag_name + (active.text or ""))
        outline = d.execute_script("const s = getComputedStyle(document.activeElement); return [s.outlineStyle, s.outlineWidth];")
        if active.tag_name in ("a", "button") and (outline[0] == "none" or outline[1] == "0px"):
            j.failures.append(f"keyboard focus on {active.tag_name} {active.text!r} is not visible")
        keyboard.send_keys(Keys.TAB).perform()
    if len(seen) < 4:
        j.failures.append(f"Tab reached only {len(seen)} elements")

    # The demo worker's oplog, from the component's page.
    j.click("//a[normalize-space(.)='counter']", "the link counter")
    j.heading("Component counter")
    j.wait_text("main table", "delta: s64")
    j.page_done("03-component")
    j.click("//a[normalize-space(.)='Workers of counter']", "the link Workers of counter")
    j.heading("Workers of counter")
    j.wait_text("main table", "w1")
    j.page_done("04-workers")
    j.click("//a[normalize-space(.)='w1']", "the link w1")
    j.heading("Worker w1")
    j.wait_text("ol.timeline", "Invoked")
    assert "add(1)" in j.text("ol.timeline"), j.text("ol.timeline")

    # Invoke through the generated form: 1 + 41.
    Select(j.field("Function")).select_by_visible_text("add")
    j.field("delta").send_keys("41")
    j.field("Idempotency key").send_keys("from-the-console")
    j.button("Invoke").click()
    j.wait_text("#invoke-result", "42")
    # The timeline shows the call at once, as the oplog recorded it.
    j.wait_text("ol.timeline", "add(41) · key from-the-console")
    j.wait_text("ol.timeline", "→ 42")
    j.page_done("05-worker")
    # The whole page, for the README.
    d.set_window_size(1280, 1700)
    j.shot("worker-page")
    d.set_window_size(1280, 1100)
    # A bad value is refused before it is sent, in words.
    j.field("delta").clear()
    j.field("delta").send_keys("forty")
    j.button("Invoke").click()
    j.wait_text("#alert", "Not a whole number")

    # An API problem, shown in words: a worker name the API refuses.
    j.go("/components/counter/workers")
    j.heading("Workers of counter")
    j.field("Worker name").send_keys("Not A Name!")
    j.button("Create").click()
    j.wait_text("#alert", "invalid_name")
    j.page_done("06-problem")

    # Upload with progress, then a worker of it with live logs.
    j.go("/components")
    j.heading("Components")
    j.field("Name").send_keys("logger")
    j.field("Component file (.wasm, or .tar with its files)").send_keys(os.path.join(components, "logger.wasm"))
    j.button("Upload").click()
    j.heading("Component logger")
    j.go("/components/logger/workers")
    j.heading("Workers of logger")
    j.field("Worker name").send_keys("talker")
    j.button("Create").click()
    j.heading("Worker talker")
    j.button("Follow live").click()
    j.wait_text("main", "Following")
    Select(j.field("Function")).select_by_visible_text("log")
    j.field("line").send_keys("hello from the browser")
    j.button("Invoke").click()
    j.wait_text("#invoke-result", "1")
    j.wait_text("#logs", "hello from the browser")
    j.page_done("07-live-logs")

    # A record parameter, from fields generated by its WIT type.
    j.go("/components")
    j.heading("Components")
    j.field("Name").send_keys("types")
    j.field("Component file (.wasm, or .tar with its files)").send_keys(os.path.join(components, "types.wasm"))
    j.button("Upload").click()
    j.heading("Component types")
    # Its worker's status is read further on (the list filtered to active workers), and a worker
    # on the baseline tier leaves its instance, and that status, when the optimized code comes.
    wait_optimized(j.base, demo_key, "types")
    j.go("/components/types/workers")
    j.heading("Workers of types")
    j.field("Worker name").send_keys("t1")
    j.button("Create").click()
    j.heading("Worker t1")
    Select(j.field("Function")).select_by_visible_text("echo-record")
    j.field("name").send_keys("Ada")
    j.field("age").send_keys("36")
    j.field("tags").send_keys('["math", "engines"]')
    j.button("Invoke").click()
    j.wait_text("#invoke-result", '"name":"Ada"')
    assert '"engines"' in j.text("#invoke-result"), j.text("#invoke-result")
    Select(j.field("Function")).select_by_visible_text("echo-enum")
    Select(j.field("x")).select_by_visible_text("green")
    j.button("Invoke").click()
    j.wait_text("#invoke-result", '"green"')
    j.page_done("08-generated-form")

    # A resource: made by one call, its handle given to another.
    j.go("/components")
    j.heading("Components")
    j.field("Name").send_keys("objects")
    j.field("Component file (.wasm, or .tar with its files)").send_keys(os.path.join(components, "objects.wasm"))
    j.button("Upload").click()
    j.heading("Component objects")
    j.go("/components/objects/workers")
    j.heading("Workers of objects")
    j.field("Worker name").send_keys("o1")
    j.button("Create").click()
    j.heading("Worker o1")
    Select(j.field("Function")).select_by_visible_text("invicta:objects/tallies.{make}")
    j.field("start").send_keys("3")
    j.button("Invoke").click()
    j.wait_text("#invoke-result", '"handle"')
    handle = json.loads(j.text("#invoke-result").split("\n")[0])["handle"]
    Select(j.field("Function")).select_by_visible_text("invicta:objects/tallies.{peek}")
    j.field("t").send_keys(handle)
    j.button("Invoke").click()
    j.wait(lambda d: j.text("#invoke-result").startswith("3\n"), "the tally read through its handle")
    j.page_done("09-resource-handles")

    # A component with files, uploaded as a tar archive; a worker's files, browsed.
    bundle = os.path.join(j.shots, "files-bundle.tar")
    with tarfile.open(bundle, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(os.path.join(components, "files.wasm"), arcname="component.wasm")
        readme = tarfile.TarInfo("files/etc/readme.txt")
        text = b"shipped with the version\n"
        readme.size, readme.mode = len(text), 0o444
        tar.addfile(readme, io.BytesIO(text))
    j.go("/components")
    j.heading("Components")
    j.field("Name").send_keys("files")
    j.field("Component file (.wasm, or .tar with its files)").send_keys(bundle)
    j.button("Upload").click()
    j.heading("Component files")
    j.go("/components/files/workers")
    j.heading("Workers of files")
    j.field("Worker name").send_keys("f1")
    j.button("Create").click()
    j.heading("Worker f1")
    Select(j.field("Function")).select_by_visible_text("write-text")
    j.field("path").send_keys("/notes.txt")
    j.field("content").send_keys("written by the worker")
    j.button("Invoke").click()
    j.wait_text("#invoke-result", "ok")
    j.button("Show files").click()
    j.wait_text("#files table", "notes.txt")
    j.click("//div[@id='files']//button[text()='etc/']", "the etc/ directory")
    j.wait(lambda d: all(w in j.text("#files table") for w in ("readme.txt", "read-only")), "etc/ listed, read-only")
    j.click("//div[@id='files']//button[text()='readme.txt']", "readme.txt in etc/")
    j.wait_text("#files pre", "shipped with the version")
    j.click("//div[@id='files']//button[text()='/']", "the way back to /")
    j.click("//div[@id='files']//button[text()='notes.txt']", "notes.txt at /")
    j.wait_text("#files pre", "written by the worker")
    j.page_done("10-worker-files")

    # Workers: filter, interrupt and delete from the list.
    j.go("/components/types/workers?status=active")
    j.heading("Workers of types")
    j.wait_text("main table", "t1")
    j.click("//button[@aria-label='Delete t1']", "the delete button of t1")
    j.wait(EC.alert_is_present(), "the confirmation")
    d.switch_to.alert.accept()
    j.wait(lambda d: "t1" not in j.text("main table"), "t1 gone from the list")

    # Usage, against the plan.
    j.go("/usage")
    j.heading("Usage in")
    j.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "figure.chart svg rect"), "the usage charts")
    assert "Fuel this month" in j.text("main"), j.text("main")
    j.page_done("09-usage")

    # Keys: the secret is shown once; revoked, it says so.
    j.go("/keys")
    j.heading("Keys")
    j.button("Create key").click()
    j.wait(lambda d: re.search(r"inv_[0-9a-f]+_[0-9a-f]+", j.text("#new-key")), "the new key")
    prefix = re.search(r"(inv_[0-9a-f]+_)", j.text("#new-key")).group(1)
    j.page_done("10-keys")
    j.wait(EC.element_to_be_clickable((By.XPATH, f"//button[@aria-label='Revoke {prefix}']")), "the revoke button").click()
    j.wait(EC.alert_is_present(), "the confirmation")
    d.switch_to.alert.accept()
    j.wait(lambda d: not d.find_elements(By.XPATH, f"//button[@aria-label='Revoke {prefix}']"), "the key revoked")
    j.sign_out()


def operator_journey(j, operator_key):
    d = j.driver
    j.sign_in(operator_key)
    j.heading("Tenants")
    j.wait_text("main table", "demo")
    j.page_done("11-tenants")
    j.field("Tenant name").send_keys("acme")
    Select(j.field("Plan")).select_by_visible_text("free")
    j.button("Create tenant").click()
    j.heading("Tenant acme")
    Select(j.field("Move to plan")).select_by_visible_text("pro")
    j.button("Move").click()
    j.wait_text("#tenant-plan", "pro")
    j.button("Create key").click()
    j.wait(lambda d: re.search(r"inv_[0-9a-f]+_[0-9a-f]+", j.text("#new-key")), "acme's first key")
    j.page_done("12-tenant")

    j.go("/plans")
    j.heading("Plans")
    Select(j.field("Start from")).select_by_visible_text("free")
    name = j.field("Plan name")
    name.clear()
    name.send_keys("team")
    j.button("Save plan").click()
    j.wait_text("main table", "team")
    j.page_done("13-plans")

    j.go("/invoices")
    j.heading("Invoices")
    Select(j.field("Tenant")).select_by_index(0)
    j.button("Show invoice").click()
    j.wait_text("#invoice-total", "Total")
    j.page_done("14-invoice")

    j.go("/cluster")
    j.heading("Cluster")
    j.wait_text("main", "in process (all-in-one)")
    shard_rows = "//h2[text()='Shards']/following-sibling::table[1]/tbody/tr"
    j.wait(lambda d: len(d.find_elements(By.XPATH, shard_rows)) == 64, "the 64 shards listed")
    j.page_done("15-cluster")
    j.sign_out()


def start_server(invicta, components, data_dir):
    # Workers stay active for the whole journey: the list filtered by status must not depend on
    # how long the pages before it took (idle suspension after the default minute did, on a slow
    # machine).
    config = os.path.join(data_dir, "browser.toml")
    os.makedirs(data_dir, exist_ok=True)
    with open(config, "w") as f:
        f.write("[executor]\nidle_suspend_ms = 3600000\n")
    server = subprocess.Popen(
        [invicta, "server", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--config", config,
         "--demo", os.path.join(components, "counter.wasm")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, NO_COLOR="1"),
    )
    found = {}
    ready = threading.Event()

    def read():
        for line in server.stdout:
            m = re.match(r"invicta listening on (http://\S+)", line)
            if m:
                found["base"] = m.group(1)
            m = re.search(r"operator key \(shown once.*\): (\S+)", line)
            if m:
                found["operator"] = m.group(1)
            m = re.search(r"sign in with the demo tenant's key (\S+)", line)
            if m:
                found["demo"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120) or "demo" not in found:
        server.kill()
        raise SystemExit("the server did not print the demo key")
    return server, found


def main():
    invicta, components, shots = (os.path.abspath(p) for p in sys.argv[1:4])
    os.makedirs(shots, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100",
                "--disable-gpu", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    with tempfile.TemporaryDirectory() as data_dir:
        server, found = start_server(invicta, components, data_dir)
        driver = webdriver.Chrome(options=options, service=service)
        journey = Journey(driver, found["base"], shots)
        try:
            tenant_journey(journey, found["demo"], components)
            operator_journey(journey, found["operator"])
        except AssertionError as e:
            journey.failures.append(f"journey stopped: {e}")
        except WebDriverException as e:
            journey.shot("driver-error")
            journey.failures.append(f"journey stopped by the browser: {e.msg}")
        finally:
            driver.quit()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"browser tests: {journey.pages} pages checked, screenshots in {shots}")
    if journey.failures:
        for failure in journey.failures:
            print(f"FAIL {failure}")
        sys.exit(1)
    print("browser tests: all passed")


if __name__ == "__main__":
    main()
