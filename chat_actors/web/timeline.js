/**
 * timeline.js: the message list of the open conversation.
 *
 * Messages are keyed by seq (pending sends by their client id until the ack gives them one)
 * and inserted in seq order wherever they arrive from: a live event, a catch-up page after a
 * reconnect, an older page when scrolling up. A pending message turns into the sent one in
 * place, so nothing ever shows twice. The user's read cursor moves only for messages that are
 * on screen while the page is visible; the "New messages" marker stays where the cursor was
 * when the conversation was opened.
 */

import { avatar, clockTime, dayKey, dayLabel, fullTime, h, icon, listNames } from './dom.js';

const GROUP_MS = 5 * 60 * 1000;  // one sender's messages within this run together
const NEAR_TOP_PX = 300;         // scrolled this close to the top: load the page before
const RECEIPTS_ON_LAST = 20;     // "seen by" is shown among the user's latest messages only

export class TimelineView {
  /**
   * @param {object} parts  scroller (the scrolling box), list (the <ol>), status (the line
   *   above the first message), jump (the "jump to latest" button), chat (a ChatClient)
   */
  constructor({ scroller, list, status, jump, chat }) {
    Object.assign(this, { scroller, list, status, jump, chat });
    this.name = null;
    this.els = new Map();     // key ("s:<seq>" or "p:<id>") -> <li>
    this.markerSeq = null;
    this.marker = h('li', { class: 'marker', role: 'separator', 'aria-label': 'New messages' },
      h('span', { text: 'New messages' }));
    this._readFrame = 0;
    scroller.addEventListener('scroll', () => this._onScroll(), { passive: true });
    jump.addEventListener('click', () => { this.scrollToBottom(); this.scroller.focus(); });
    document.addEventListener('visibilitychange', () => this.checkRead());
    window.addEventListener('resize', () => this.checkRead());
  }

  /** Open `name`: render what is held now (the rest arrives as events). */
  show(name) {
    this.name = name;
    const room = this.chat.room(name);
    this.markerSeq = room.read < room.seq ? room.read : null;
    this.render();
  }

  clearMarker() {
    this.markerSeq = null;
    this.marker.remove();
  }

  /** Render the open room whole (on open, and when its timeline was loaded). */
  render() {
    const room = this.chat.room(this.name);
    this.list.replaceChildren();
    this.els.clear();
    for (const message of room.timeline()) this.list.append(this._messageEl(message));
    for (const item of this.chat.pendingIn(this.name)) this.list.append(this._pendingEl(item));
    this._regroup();
    this.renderReceipts();
    this._updateStatus();
    if (this.marker.isConnected) this.marker.scrollIntoView({ block: 'center' });
    else this.scrollToBottom();
    this._fillViewport();
    this.checkRead();
  }

  // ------------------------------------------------------------------------- chat events

  onMessage(message) {
    const key = `s:${message.seq}`;
    if (this.els.has(key)) return;
    const stick = this._atBottom();
    if (document.visibilityState !== 'visible' && this.markerSeq === null) {
      this.markerSeq = this.chat.room(this.name).read;  // arrived unseen: mark where reading stopped
    }
    this._insert(this._messageEl(message), message.seq);
    this._regroup();
    this.renderReceipts();
    if (stick) this.scrollToBottom();
    this._updateJump();
    this.checkRead();
  }

  onOlder(messages) {
    const before = this.scroller.scrollHeight - this.scroller.scrollTop;
    for (const message of messages) {
      if (!this.els.has(`s:${message.seq}`)) this._insert(this._messageEl(message), message.seq);
    }
    this._regroup();
    this._updateStatus();
    this.scroller.scrollTop = this.scroller.scrollHeight - before;  // keep what was on screen in place
    this._fillViewport();
  }

  onPending(item) {
    const old = this.els.get(`p:${item.id}`);
    const el = this._pendingEl(item);
    if (old) old.replaceWith(el);
    else this.list.append(el);
    this._regroup();
    this.scrollToBottom();
  }

  onSent(item, message) {
    const pending = this.els.get(`p:${item.id}`);
    if (pending) {
      pending.remove();
      this.els.delete(`p:${item.id}`);
    }
    if (!this.els.has(`s:${message.seq}`)) {
      const stick = this._atBottom();
      this._insert(this._messageEl(message), message.seq);
      if (stick) this.scrollToBottom();
    }
    this._regroup();
    this.renderReceipts();
  }

  onFailed(item) {
    this.onPending(item);
  }

  /**
   * "Seen by ..." under the user's own latest messages: each other user is named once, under
   * the latest of them their read cursor has passed (a relayed `read`, or a message they sent).
   */
  renderReceipts() {
    for (const el of this.list.querySelectorAll('.seen:not([hidden])')) {
      el.textContent = '';
      el.hidden = true;
    }
    const room = this.chat.room(this.name);
    const recent = [...this.list.querySelectorAll('li.msg.own[data-seq]')].slice(-RECEIPTS_ON_LAST);
    const readers = new Map();  // <li> -> [users]
    for (const [user, seq] of room.receipts) {
      for (let i = recent.length - 1; i >= 0; i -= 1) {
        if (Number(recent[i].dataset.seq) <= seq) {
          if (!readers.has(recent[i])) readers.set(recent[i], []);
          readers.get(recent[i]).push(user);
          break;
        }
      }
    }
    for (const [li, users] of readers) {
      const seen = li.querySelector('.seen');
      seen.textContent = `Seen by ${listNames(users.sort())}`;
      seen.hidden = false;
    }
  }

  // ------------------------------------------------------------------------------ reading

  /** Move the read cursor to the last message on screen (only while the page is visible). */
  checkRead() {
    if (this._readFrame) return;
    this._readFrame = requestAnimationFrame(() => {
      this._readFrame = 0;
      if (!this.name || document.visibilityState !== 'visible') return;
      const box = this.scroller.getBoundingClientRect();
      const messages = this.list.querySelectorAll('li.msg[data-seq]');
      for (let i = messages.length - 1; i >= 0; i -= 1) {
        const rect = messages[i].getBoundingClientRect();
        if (rect.bottom <= box.top) break;
        if (rect.top < box.bottom - 8) {
          this.chat.markRead(this.name, Number(messages[i].dataset.seq));
          break;
        }
      }
    });
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this._updateJump();
  }

  _atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
  }

  _onScroll() {
    this._updateJump();
    this.checkRead();
    if (this.scroller.scrollTop < NEAR_TOP_PX) this._loadOlder();
  }

  _updateJump() {
    this.jump.hidden = this._atBottom();
  }

  /** Load older pages while the list does not fill the box (nothing to scroll up with). */
  _fillViewport() {
    if (this.scroller.scrollHeight <= this.scroller.clientHeight + NEAR_TOP_PX) this._loadOlder();
  }

  _loadOlder() {
    const room = this.chat.room(this.name);
    if (!room.loaded || !room.hasOlder || room._olderLoading) return;
    this._updateStatus(true);
    this.chat.loadOlder(this.name).catch(() => this._updateStatus());
  }

  _updateStatus(loading = false) {
    const room = this.chat.room(this.name);
    let text = '';
    if (!room.loaded) text = 'Loading messages…';
    else if (loading || room.hasOlder) text = 'Loading older messages…';
    else if (room.direct) text = 'This is the start of your conversation.';
    else text = `This is the very beginning of #${room.name}.`;
    this.status.textContent = text;
    this.status.classList.toggle('start', room.loaded && !room.hasOlder && !loading);
  }

  // ------------------------------------------------------------------------------ elements

  _messageEl(message) {
    const me = message.from === this.chat.user;
    const li = this._shell(message, me ? 'msg own' : 'msg');
    li.dataset.seq = message.seq;
    li.dataset.status = 'sent';
    this.els.set(`s:${message.seq}`, li);
    if (me) li.querySelector('.status').append(icon('check'), h('span', { class: 'visually-hidden', text: 'Sent' }));
    return li;
  }

  _pendingEl(item) {
    const failed = item.status === 'failed';
    const li = this._shell(item, `msg own ${failed ? 'failed' : 'pending'}`);
    li.dataset.pending = item.id;
    li.dataset.status = item.status;
    const status = li.querySelector('.status');
    if (failed) {
      status.append(icon('alert'), h('span', { text: `Not sent: ${item.error?.message || 'refused'}` }));
      li.querySelector('.bubble').append(h('div', { class: 'failed-actions' },
        h('button', { type: 'button', class: 'link', text: 'Retry', on: { click: () => this.chat.retry(item.id) } }),
        h('button', { type: 'button', class: 'link', text: 'Discard', on: { click: () => {
          this.chat.discard(item.id); li.remove(); this.els.delete(`p:${item.id}`); this._regroup();
        } } })));
    } else {
      status.append(icon('clock'), h('span', { class: 'status-text', text: 'Sending…' }));
    }
    this.els.set(`p:${item.id}`, li);
    return li;
  }

  _shell(message, cls) {
    const when = new Date(message.ts);
    return h('li', { class: cls, dataset: { from: message.from, ts: message.ts, day: dayKey(message.ts) } },
      h('div', { class: 'day-sep', role: 'separator' }, h('span', { text: dayLabel(message.ts) })),
      h('div', { class: 'row' },
        avatar(message.from, 'msg-avatar'),
        h('div', { class: 'bubble' },
          h('div', { class: 'meta' },
            h('span', { class: 'from', text: message.from }),
            h('time', { datetime: when.toISOString(), title: fullTime(message.ts), text: clockTime(message.ts) }),
            h('span', { class: 'status' })),
          h('p', { class: 'text', text: message.text }),
          h('p', { class: 'seen', hidden: true }))));
  }

  /** Insert before the first message with a higher seq (pending sends stay last). */
  _insert(li, seq) {
    let before = null;
    for (let node = this.list.lastElementChild; node; node = node.previousElementSibling) {
      if (node === this.marker) continue;
      if (node.dataset.pending || Number(node.dataset.seq) > seq) { before = node; continue; }
      break;
    }
    this.list.insertBefore(li, before);
  }

  /** Day separators, runs of one sender, and the "New messages" marker. */
  _regroup() {
    this.marker.remove();
    let prev = null;
    let markerAt = null;
    // the marker shows once the message right after the cursor is held (older pages may follow)
    const room = this.chat.room(this.name);
    const markerHeld = this.markerSeq !== null && room.loaded && room.oldest <= this.markerSeq + 1;
    for (const li of this.list.querySelectorAll('li.msg')) {
      const firstOfDay = !prev || prev.dataset.day !== li.dataset.day;
      const unreadStart = markerHeld && !markerAt && li.dataset.seq
        && Number(li.dataset.seq) > this.markerSeq && li.dataset.from !== this.chat.user;
      if (unreadStart) markerAt = li;
      const cont = Boolean(prev) && !firstOfDay && !unreadStart && prev.dataset.from === li.dataset.from
        && Number(li.dataset.ts) - Number(prev.dataset.ts) < GROUP_MS;
      li.classList.toggle('first-of-day', firstOfDay);
      li.classList.toggle('cont', cont);
      prev = li;
    }
    if (markerAt) this.list.insertBefore(this.marker, markerAt);
  }
}
