// Loads a served dashboard in the system's headless Chromium, checks that the leaderboard table and a
// plotly chart rendered, saves a full-page screenshot and prints what it found as one JSON line.
// Usage: node check.js URL SCREENSHOT.png [CHROMIUM_PATH]
// README screenshot: isopo-bench dashboard --port 8611 --tracking-uri sqlite:////abs/mlflow.db, then
//   VIEWPORT=1500x1500 node check.js http://127.0.0.1:8611 ../../docs/dashboard.png
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

// EVERY_TAB=1: also click each tab and save SCREENSHOT-<tab>.png (to review the other pages by eye).
async function screenshotTabs(page, screenshot, result) {
  result.plotly_per_tab = {};
  for (const name of result.tabs) {
    await page.getByRole("tab", { name }).click();
    await page.waitForTimeout(3000);
    result.plotly_per_tab[name] = await page.locator(".js-plotly-plot:visible").count();
    const file = screenshot.replace(/\.png$/, `-${name.replace(/\W+/g, "_")}.png`);
    await page.screenshot({ path: file, fullPage: true });
  }
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
    if (process.env.EVERY_TAB) await screenshotTabs(page, screenshot, result);
    console.log(JSON.stringify(result));
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
