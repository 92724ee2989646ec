// Loads a served dashboard in the system's headless Chromium, checks that the leaderboard table and a
// plotly chart rendered, saves a full-page screenshot, opens every tab (counting its charts and errors),
// and with SELECT_ARM="algorithm · lr · optimizer" adds that arm in the Curves tab's arm selector and
// reads the curves' legends before and after; with START_POINT="hash (n runs)" picks that option in the
// sidebar's start-point selector and reads the Leaderboard tab's table and bars before and after; prints what
// it found as one JSON line.
// Usage: [SELECT_ARM=...] [START_POINT=...] node check.js URL SCREENSHOT.png [CHROMIUM_PATH]
// With SELECT_ARM the Curves tab after the selection is saved as SCREENSHOT-curves.png, with START_POINT the
// Leaderboard tab after the pick as SCREENSHOT-start.png. The README's docs/dashboard.png is SCREENSHOT.png
// (the Leaderboard tab as first drawn) for the quick suite's store (docs/dashboard.md, "Tests and the README
// screenshot"): isopo-bench dashboard --port PORT --tracking-uri sqlite:////abs/mlflow.db, then
//   VIEWPORT=1500x1560 node check.js http://127.0.0.1:PORT /tmp/shot.png
// playwright-core never downloads a browser; it drives the Chromium given (Debian's /usr/bin/chromium).
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [url, screenshot, executablePath = "/usr/bin/chromium"] = process.argv.slice(2);
// Offline and quiet: no update checks, sync, QUIC or first-run UI on a CI machine.
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"];
const TIMEOUT_MS = 90000;
// VIEWPORT=WxH (default 1500x1000): Streamlit scrolls inside its own container, so a full-page
// screenshot holds only what fits the viewport; the README screenshot uses a taller one.
const [WIDTH, HEIGHT] = (process.env.VIEWPORT || "1500x1000").split("x").map(Number);

// Every tab: its visible charts and error boxes; EVERY_TAB=1 also saves SCREENSHOT-<tab>.png (to review by eye).
async function visitTabs(page, screenshot, result) {
  result.plotly_per_tab = {};
  result.exceptions_per_tab = {};
  for (const name of result.tabs) {
    await page.getByRole("tab", { name }).click();
    await page.waitForTimeout(3000);
    result.plotly_per_tab[name] = await page.locator(".js-plotly-plot:visible").count();
    result.exceptions_per_tab[name] = await page.locator('[data-testid="stException"]:visible, [data-testid="stAlertContentError"]:visible').count();
    if (process.env.EVERY_TAB) {
      const file = screenshot.replace(/\.png$/, `-${name.replace(/\W+/g, "_")}.png`);
      await page.screenshot({ path: file, fullPage: true });
    }
  }
}

// Plotly's legend entries are SVG text, which has no innerText.
// Streamlit shows its status widget ("Running...", "Stop") while a script run draws the page.
const idle = (page) => page.locator('[data-testid="stStatusWidget"]').waitFor({ state: "hidden", timeout: TIMEOUT_MS });

const legends = (page) => page.locator(".js-plotly-plot:visible .legendtext").evaluateAll((n) => n.map((t) => t.textContent));

// The Curves tab's arm selector (its label starts with "Arms"): open it, pick the arm, wait for its curve.
async function selectArm(page, arm, screenshot, result) {
  await page.getByRole("tab", { name: "Curves" }).click();
  await page.waitForTimeout(2000);
  result.curve_legends_before = [...new Set(await legends(page))].sort();
  const selector = page.locator('[data-testid="stMultiSelect"]:visible').filter({ hasText: "Arms" }).first();
  await selector.locator("input").click();  // the label holds a help button: open the list from its input
  await page.getByRole("option", { name: arm, exact: true }).click();
  await page.keyboard.press("Escape");
  await page.locator(".js-plotly-plot:visible .legendtext", { hasText: arm }).first()
    .waitFor({ state: "attached", timeout: TIMEOUT_MS });
  await idle(page);
  await page.waitForTimeout(1500);
  result.curve_legends_after = [...new Set(await legends(page))].sort();
  result.selected_arms = await selector.locator("[data-tag]").evaluateAll((tags) => tags.map((t) => t.getAttribute("aria-label")));
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-curves.png"), fullPage: true });
}

const ERRORS = '[data-testid="stException"]:visible, [data-testid="stAlertContentError"]:visible';

// The Leaderboard tab as drawn: the table's rows (st.dataframe paints a canvas; its accessible copy holds the
// cells), the first chart's bars, the group headings and the visible error boxes.
async function leaderboardState(page) {
  await page.getByRole("tab", { name: "Leaderboard" }).click();
  await page.locator('[data-testid="stDataFrame"]:visible').first().waitFor({ timeout: TIMEOUT_MS });
  await page.waitForTimeout(1500);
  const table = page.locator('[data-testid="stDataFrame"]:visible').first().locator("table");
  const header = await table.locator("thead th").allInnerTexts();
  const rows = await table.locator("tbody tr")
    .evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((c) => c.innerText)));
  const bars = await page.locator(".js-plotly-plot:visible").first()
    .evaluate((gd) => ({ x: Array.from(gd._fullData[0].x), y: Array.from(gd._fullData[0].y) }));
  return {
    header, rows, bars,
    headings: await page.getByRole("heading").filter({ hasText: "Leaderboard:" }).allInnerTexts(),
    errors: await page.locator(ERRORS).count(),
  };
}

// The sidebar's start-point selector (a combobox labelled "Start point"): its value, then pick `option`.
async function selectStartPoint(page, option, screenshot, result) {
  const input = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]')
    .filter({ hasText: "Start point" }).locator("input");
  result.start_point_before = await input.inputValue();
  result.leaderboard_before = await leaderboardState(page);
  await input.click();
  await page.getByRole("option", { name: option, exact: true }).click();
  await page.waitForTimeout(500);
  await idle(page);
  result.start_point_after = await input.inputValue();
  result.leaderboard_after = await leaderboardState(page);
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-start.png"), fullPage: true });
}

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "isopo-chromium-"));  // a fresh --user-data-dir
  const context = await chromium.launchPersistentContext(profile, {
    executablePath, headless: true, args: ARGS, viewport: { width: WIDTH, height: HEIGHT },
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    await page.goto(url, { waitUntil: "domcontentloaded", timeout: TIMEOUT_MS });
    await page.getByRole("tab", { name: "Leaderboard" }).waitFor({ timeout: TIMEOUT_MS });
    await page.locator('[data-testid="stDataFrame"]').first().waitFor({ timeout: TIMEOUT_MS });
    await page.locator(".js-plotly-plot").first().waitFor({ state: "attached", timeout: TIMEOUT_MS });
    await page.waitForTimeout(1500);  // let plotly finish its first layout before the screenshot
    const result = {
      title: await page.title(),
      tabs: await page.getByRole("tab").allInnerTexts(),
      dataframes: await page.locator('[data-testid="stDataFrame"]:visible').count(),
      plotly: await page.locator(".js-plotly-plot:visible").count(),
      exceptions: await page.locator('[data-testid="stException"]').count(),
      leaderboard_headings: await page.getByRole("heading").filter({ hasText: "Leaderboard:" }).allInnerTexts(),
    };
    await page.screenshot({ path: screenshot, fullPage: true });
    await visitTabs(page, screenshot, result);
    if (process.env.SELECT_ARM) await selectArm(page, process.env.SELECT_ARM, screenshot, result);
    if (process.env.START_POINT) await selectStartPoint(page, process.env.START_POINT, screenshot, result);
    console.log(JSON.stringify(result));
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
