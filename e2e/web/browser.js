// Headless Debian Chromium through playwright-core, as every browser test launches it
// (not a test file itself: `node --test` runs only `*.test.js`).
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

/** Launches Chromium headless, without a sandbox (tests run as root) or background traffic. */
export function launchChromium() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run"],
  });
}
