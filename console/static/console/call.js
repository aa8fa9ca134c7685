// The room's video call (issue 3, CONTRACT section 3): the browser's WebRTC, with the
// offer, the answer and the ICE candidates carried as `call.signal` frames on the room's
// own socket. The server relays a signal to the other participant only and keeps the
// chat record of calls from the signals' `type`: the first `offer` stores `call.started`,
// a `hangup` (or `bye`) stores `call.ended` (consultations/messaging.py
// call_signal_seen). The signals this page sends:
//
//   {"type": "offer", "sdp": "…"}              the doctor calls (or renegotiates)
//   {"type": "answer", "sdp": "…"}             the doctor answers the patient's offer
//   {"type": "candidate", "candidate": {…}}    an ICE candidate (RTCIceCandidateInit)
//   {"type": "hangup"}                         the call is over
//
// Calls are possible only while the consultation is in progress; the page ends a call
// of its own when the consultation leaves that state.

import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);

/** The least time between two signals sent (the socket allows 20 frames a second). */
const SIGNAL_GAP_MS = 60;
const RETRY_MS = 500;

/** A getUserMedia failure → the words that say what to do about it. */
function mediaErrorKey(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
    case "PermissionDeniedError":
      return "call_error_denied";
    case "NotFoundError":
    case "OverconstrainedError":
    case "DevicesNotFoundError":
      return "call_error_no_device";
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return "call_error_busy";
    default:
      return "call_error_media";
  }
}

const STATE_WORDS = {
  idle: "call_state_idle",
  closed: "call_state_closed",
  media: "call_state_media",
  calling: "call_state_calling",
  incoming: "call_state_incoming",
  connecting: "call_state_connecting",
  connected: "call_state_connected",
  interrupted: "call_state_interrupted",
  failed: "call_state_failed",
  ended: "call_state_ended",
  ended_by_patient: "call_state_ended_by_patient",
};

export class VideoCall {
  /**
   * @param {object} options
   * @param {(signal: object) => boolean} options.send  sends a `call.signal` frame; false
   *   when the socket is not open (the signal is kept and sent again shortly)
   * @param {() => boolean} options.connected  whether the room's socket is open now
   * @param {RTCIceServer[]} [options.iceServers]
   */
  constructor({ send, connected, iceServers = [] }) {
    this.sendNow = send;
    this.connected = connected;
    this.iceServers = iceServers;
    this.startButton = $("call-start");
    this.hangupButton = $("call-hangup");
    this.stage = $("call-stage");
    this.localVideo = $("call-local");
    this.remoteVideo = $("call-remote");
    this.stateText = $("call-state");
    this.errorText = $("call-error");
    this.open = false; // the consultation is in progress
    this.pc = null;
    this.stream = null;
    this.incoming = null; // the patient's offer, waiting for the doctor to answer
    this.pendingCandidates = []; // arrived before the remote description
    this.outgoing = [];
    this.pumpTimer = 0;
    this.lastSent = 0;
    this.opening = false; // the browser is opening the camera
    this.generation = 0; // bumped by every teardown: a camera that opens late is let go
    this.state = "closed";
    this.startButton.addEventListener("click", () => this.start());
    this.hangupButton.addEventListener("click", () => this.hangUp());
    window.addEventListener("pagehide", () => {
      if (this.pc) this.sendNow({ type: "hangup" }); // best effort: the page is going
    });
    this.render();
  }

  get active() {
    return this.pc !== null;
  }

  /** The consultation is (or is no longer) in progress. */
  setOpen(open) {
    this.open = open;
    if (!open && (this.active || this.incoming || this.opening)) {
      // The server refuses signals now: end the call here only.
      this.incoming = null;
      this.teardown();
      this.outgoing = [];
      this.setState("closed");
      return;
    }
    if (open && this.state === "closed") this.setState("idle");
    else this.render();
  }

  setState(state) {
    this.state = state;
    this.render();
  }

  render() {
    const busy = this.active || this.opening;
    this.startButton.disabled = !this.open || busy;
    this.startButton.textContent = this.incoming ? t("call_answer") : t("call_start");
    this.hangupButton.disabled = !(busy || this.incoming);
    this.stage.hidden = !busy;
    this.stateText.textContent = t(STATE_WORDS[this.state] || "call_state_idle");
    this.stateText.dataset.state = this.state;
  }

  showError(key, error) {
    this.errorText.hidden = false;
    this.errorText.textContent = t(key);
    this.errorText.dataset.code = key;
    if (error?.name) this.errorText.title = `${error.name}: ${error.message || ""}`;
  }

  clearError() {
    this.errorText.hidden = true;
    this.errorText.textContent = "";
    delete this.errorText.dataset.code;
  }

  // --- signals out: in order, paced, kept while the socket reconnects ---------------------

  signal(signal) {
    this.outgoing.push(signal);
    this.pump();
  }

  pump() {
    clearTimeout(this.pumpTimer);
    while (this.outgoing.length) {
      const wait = this.lastSent + SIGNAL_GAP_MS - Date.now();
      if (wait > 0) {
        this.pumpTimer = setTimeout(() => this.pump(), wait);
        return;
      }
      if (!this.sendNow(this.outgoing[0])) {
        this.pumpTimer = setTimeout(() => this.pump(), RETRY_MS);
        return;
      }
      this.outgoing.shift();
      this.lastSent = Date.now();
    }
  }

  // --- the doctor's actions ----------------------------------------------------------------

  async start() {
    if (!this.open || this.active || this.opening) return;
    this.clearError();
    if (!this.connected()) {
      this.showError("call_error_offline");
      return;
    }
    if (!(await this.openMedia())) return;
    // The patient's offer, if they called (even while the camera was opening): answer it.
    const offer = this.incoming;
    this.incoming = null;
    this.connect();
    try {
      if (offer) {
        await this.answer(offer);
      } else {
        const description = await this.pc.createOffer();
        await this.pc.setLocalDescription(description);
        this.signal({ type: "offer", sdp: description.sdp });
        this.setState("calling");
      }
    } catch (error) {
      this.teardown();
      this.showError("call_error_failed", error);
      this.setState(this.open ? "idle" : "closed");
      return;
    }
    this.hangupButton.focus();
  }

  hangUp() {
    const had = this.active || this.incoming;
    this.incoming = null;
    this.teardown();
    if (had) this.signal({ type: "hangup" });
    this.setState(this.open ? "ended" : "closed");
    this.startButton.focus();
  }

  async openMedia() {
    if (!navigator.mediaDevices?.getUserMedia) {
      this.showError("call_error_insecure");
      return false;
    }
    const generation = this.generation;
    this.opening = true;
    this.setState("media");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    } catch (error) {
      this.opening = false;
      if (generation !== this.generation) {
        this.render(); // hung up meanwhile: nothing more to say
        return false;
      }
      this.showError(mediaErrorKey(error), error);
      this.setState(!this.open ? "closed" : this.incoming ? "incoming" : "idle");
      return false;
    }
    this.opening = false;
    if (generation !== this.generation || !this.open) {
      // Hung up, or the consultation ended, while the browser opened the camera.
      for (const track of stream.getTracks()) track.stop();
      this.render();
      return false;
    }
    this.stream = stream;
    this.localVideo.srcObject = stream;
    return true;
  }

  connect() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    for (const track of this.stream.getTracks()) pc.addTrack(track, this.stream);
    pc.onicecandidate = (event) => {
      if (pc === this.pc && event.candidate) {
        this.signal({ type: "candidate", candidate: event.candidate.toJSON() });
      }
    };
    pc.ontrack = (event) => {
      if (pc !== this.pc) return;
      const [stream] = event.streams;
      this.remoteVideo.srcObject = stream || new MediaStream([event.track]);
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      const state = {
        connected: "connected",
        disconnected: "interrupted",
        failed: "failed",
      }[pc.connectionState];
      if (state) this.setState(state);
    };
    this.render();
  }

  async answer(offer) {
    await this.pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
    await this.addPendingCandidates();
    const description = await this.pc.createAnswer();
    await this.pc.setLocalDescription(description);
    this.signal({ type: "answer", sdp: description.sdp });
    if (this.pc.connectionState !== "connected") this.setState("connecting");
  }

  async addPendingCandidates() {
    const candidates = this.pendingCandidates;
    this.pendingCandidates = [];
    for (const candidate of candidates) await this.addCandidate(candidate);
  }

  async addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch {
      // a candidate of an earlier negotiation: harmless
    }
  }

  teardown() {
    this.generation += 1;
    const pc = this.pc;
    this.pc = null;
    this.pendingCandidates = [];
    this.outgoing = this.outgoing.filter((s) => s.type === "hangup");
    if (pc) {
      pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
      pc.close();
    }
    for (const track of this.stream?.getTracks() || []) track.stop();
    this.stream = null;
    this.localVideo.srcObject = null;
    this.remoteVideo.srcObject = null;
  }

  // --- signals in: the patient's side of the call ------------------------------------------

  async onSignal(signal) {
    if (!signal || typeof signal !== "object") return;
    try {
      switch (signal.type) {
        case "offer":
          if (!this.active) {
            // The patient calls: the doctor answers with the call button.
            this.incoming = signal;
            this.setState("incoming");
          } else {
            await this.answer(signal); // a renegotiation (or both called at once)
          }
          break;
        case "answer":
          if (this.pc?.signalingState === "have-local-offer") {
            await this.pc.setRemoteDescription({ type: "answer", sdp: signal.sdp });
            await this.addPendingCandidates();
            if (this.state === "calling") this.setState("connecting");
          }
          break;
        case "candidate":
          if (!signal.candidate) break;
          if (this.pc?.remoteDescription) await this.addCandidate(signal.candidate);
          else if (this.pc || this.incoming) this.pendingCandidates.push(signal.candidate);
          break;
        case "hangup":
        case "bye":
          if (this.active || this.incoming) {
            this.incoming = null;
            this.teardown();
            this.setState("ended_by_patient");
          }
          break;
        default:
          break;
      }
    } catch (error) {
      this.teardown();
      this.showError("call_error_failed", error);
      this.setState(this.open ? "idle" : "closed");
    }
  }
}
