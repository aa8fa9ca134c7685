// What every signed-in console page does: sign-out and the idle-session warning.
// Page scripts import this module first; it runs once.

import { signOut, watchSession } from "./session.js";

document.getElementById("sign-out")?.addEventListener("click", signOut);
watchSession();
