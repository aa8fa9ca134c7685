// One consultation's conversation as the page holds it (docs/chat.md, CONTRACT 3):
// stored messages by seq, each kept once whatever the socket repeats; the highest seq
// seen (a reconnect resumes after it); and what the doctor wrote that the server has not
// acknowledged yet (the outbox) plus the unsent draft, both kept in sessionStorage so
// that neither a dropped connection nor a reload loses a word.

export function newClientMsgId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // non-secure origins
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export class Conversation {
  constructor(consultationId, storage = window.sessionStorage) {
    this.prefix = `console.consultation.${consultationId}`;
    this.storage = storage;
    this.messages = new Map(); // seq -> message
    this.highestSeq = 0;
    this.outbox = this.load("outbox", []);
  }

  load(name, fallback) {
    try {
      return JSON.parse(this.storage.getItem(`${this.prefix}.${name}`)) ?? fallback;
    } catch {
      return fallback;
    }
  }

  save(name, value) {
    try {
      this.storage.setItem(`${this.prefix}.${name}`, JSON.stringify(value));
    } catch {
      // storage full or disabled: the page still holds it
    }
  }

  get draft() {
    return this.load("draft", "");
  }

  set draft(text) {
    this.save("draft", text);
  }

  /** Keep a stored message; false when its seq is here already (a repeat). */
  add(message) {
    if (this.messages.has(message.seq)) return false;
    this.messages.set(message.seq, message);
    this.highestSeq = Math.max(this.highestSeq, message.seq);
    return true;
  }

  /** A message the doctor wrote, kept until the server acknowledges it. */
  enqueue(item) {
    this.outbox.push(item);
    this.save("outbox", this.outbox);
  }

  /** The server answered for this message (stored, or refused): forget it. */
  settle(clientMsgId) {
    const item = this.outbox.find((m) => m.client_msg_id === clientMsgId);
    this.outbox = this.outbox.filter((m) => m.client_msg_id !== clientMsgId);
    this.save("outbox", this.outbox);
    return item;
  }
}
