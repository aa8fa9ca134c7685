// A WebSocket that stays connected: a fresh single-use ticket for every connection
// (POST .../ws-ticket; see backend/ws_auth.py), reconnection with backoff, pings that
// notice a dead connection, the browser's offline/online events, and a visible
// connection indicator. What the frames mean is the caller's business (`onFrame`).

import { api } from "./api.js";
import { t } from "./i18n.js";

const PING_MS = 20000;
const PONG_GRACE_MS = 10000;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
/** Close codes after which trying again cannot help (CONTRACT section 3). */
const PERMANENT = new Set([4403, 4404]);

export class LiveSocket {
  /**
   * @param {object} options
   * @param {string} options.ticketPath  API path that issues this socket's ticket
   * @param {() => object} [options.params]  query parameters for each connection
   * @param {HTMLElement} options.indicator  shows the connection state
   * @param {(frame: object) => void} options.onFrame
   * @param {() => void} [options.onOpen]
   * @param {(error: object) => void} [options.onFailure]  gave up for good
   */
  constructor({ ticketPath, params = () => ({}), indicator, onFrame, onOpen, onFailure }) {
    this.ticketPath = ticketPath;
    this.params = params;
    this.indicator = indicator;
    this.onFrame = onFrame;
    this.onOpen = onOpen || (() => {});
    this.onFailure = onFailure || (() => {});
    this.ws = null;
    this.state = "idle";
    this.stopped = true;
    this.connecting = false;
    this.attempt = 0;
    this.lastHeard = 0;
    window.addEventListener("offline", () => this.drop("offline"));
    window.addEventListener("online", () => {
      if (!this.stopped && this.state !== "open") this.connect();
    });
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.detach();
    this.setState("idle");
  }

  get isOpen() {
    return this.state === "open";
  }

  /** Send a frame now; false when not connected (the caller keeps it for later). */
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  setState(state) {
    this.state = state;
    this.indicator.dataset.state = state;
    this.indicator.textContent = t(`conn_${state}`);
  }

  async connect() {
    clearTimeout(this.retryTimer);
    if (this.stopped || this.connecting || this.ws) return; // one connection at a time
    if (!navigator.onLine) {
      this.setState("offline"); // the `online` event brings us back
      return;
    }
    this.connecting = true;
    this.setState("connecting");
    let ticket;
    try {
      ticket = await api(this.ticketPath, { method: "POST" });
    } catch (error) {
      this.connecting = false;
      if (error.status === 0 || error.status === 429 || error.status >= 500) this.retry();
      else this.fail(error);
      return;
    }
    this.connecting = false;
    if (this.stopped) return;
    // The ticket's URL names the server as it saw itself; behind a proxy the page's own
    // origin is the one the browser can reach.
    const url = new URL(ticket.url);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.host = location.host;
    for (const [name, value] of Object.entries(this.params())) {
      url.searchParams.set(name, String(value));
    }
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.attempt = 0;
      this.lastHeard = Date.now();
      this.setState("open");
      this.pinger = setInterval(() => this.ping(), PING_MS);
      this.onOpen();
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type !== "pong") this.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.detach();
      if (PERMANENT.has(event.code)) this.fail({ code: `ws_${event.code}`, status: event.code });
      else this.retry();
    };
  }

  /** Give up this connection now, without waiting for a closing handshake that may
   * never come (offline, or a silent peer), and reconnect unless offline. */
  drop(reason = "dropped") {
    if (this.stopped) return;
    this.detach();
    if (reason === "offline") {
      clearTimeout(this.retryTimer);
      this.setState("offline");
    } else {
      this.retry();
    }
  }

  ping() {
    if (Date.now() - this.lastHeard > PING_MS + PONG_GRACE_MS) {
      this.drop("silent");
      return;
    }
    this.send({ type: "ping" });
  }

  detach() {
    clearInterval(this.pinger);
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close();
    } catch {
      // already closed
    }
  }

  retry() {
    if (this.stopped) return;
    this.setState("closed");
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), base * (0.75 + Math.random() * 0.5));
  }

  fail(error) {
    this.setState("failed");
    this.onFailure(error);
  }
}
