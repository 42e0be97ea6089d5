// Play a Keisei network: a board the person moves on by clicks, the engine's replies by polling.
"use strict";

const KANJI = { P: "歩", L: "香", N: "桂", S: "銀", G: "金", B: "角", R: "飛", K: "玉",
  "+P": "と", "+L": "杏", "+N": "圭", "+S": "全", "+B": "馬", "+R": "龍" };
const LETTERS = { P: "P", L: "L", N: "N", S: "S", G: "G", B: "B", R: "R", K: "K",
  "+P": "+P", "+L": "+L", "+N": "+N", "+S": "+S", "+B": "+B", "+R": "+R" };
const HAND_ORDER = ["R", "B", "G", "S", "N", "L", "P"];
const RANK_LETTERS = "abcdefghi";
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, text) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
};

// Whether two kanji draw differently (else no font has them: letters instead).
function hasGlyphs(a, b) {
  try {
    const canvas = document.createElement("canvas");
    canvas.width = 40; canvas.height = 40;
    const ctx = canvas.getContext("2d");
    const draw = (text) => { ctx.clearRect(0, 0, 40, 40); ctx.font = "32px sans-serif"; ctx.fillText(text, 2, 32);
      return ctx.getImageData(0, 0, 40, 40).data.join(","); };
    return draw(a) !== draw(b);
  } catch (error) { return true; }
}
const PIECES = hasGlyphs("歩", "香") ? KANJI : LETTERS;

const state = { game: null, selected: null, pending: null, polling: null, engine: null };

function parseSfen(sfen) {
  const [placement, turn, hands] = sfen.split(" ");
  const cells = placement.split("/").map((row) => {
    const line = [];
    let promoted = false;
    for (const ch of row) {
      if (ch === "+") { promoted = true; continue; }
      if (/\d/.test(ch)) { for (let i = 0; i < Number(ch); i++) line.push(null); continue; }
      const upper = ch.toUpperCase();
      line.push({ kind: (promoted ? "+" : "") + upper, black: ch === upper });
      promoted = false;
    }
    return line;
  });
  const hand = { black: {}, white: {} };
  if (hands && hands !== "-") {
    let count = "";
    for (const ch of hands) {
      if (/\d/.test(ch)) { count += ch; continue; }
      const side = ch === ch.toUpperCase() ? "black" : "white";
      hand[side][ch.toUpperCase()] = Number(count || 1);
      count = "";
    }
  }
  return { cells, turn, hand };
}

// The USI square shown at grid position (row, col): the person's side at the bottom.
function squareAt(row, col) {
  const black = !state.game || state.game.human === "black";
  const file = black ? 9 - col : col + 1;
  const rank = black ? row : 8 - row;
  return `${file}${RANK_LETTERS[rank]}`;
}

function pieceOn(position, square) {
  const file = Number(square[0]), rank = RANK_LETTERS.indexOf(square[1]);
  return position.cells[rank][9 - file];
}

function render() {
  const game = state.game;
  const position = parseSfen(game ? game.sfen : "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1");
  const human = game ? game.human : "black";
  const board = $("board");
  board.replaceChildren();
  board.dataset.game = game ? game.id : "";
  board.dataset.plies = String(game ? game.moves.length : 0);
  const last = game && game.moves.length ? game.moves[game.moves.length - 1] : null;
  const targets = new Set(targetsOf(state.selected));
  for (let row = 0; row < 9; row++) {
    for (let col = 0; col < 9; col++) {
      const square = squareAt(row, col);
      const piece = pieceOn(position, square);
      const classes = ["cell"];
      if (piece && piece.kind.startsWith("+")) classes.push("promoted");
      if (last && last.slice(2, 4) === square) classes.push("last");
      if (state.selected && state.selected.square === square) classes.push("selected");
      if (targets.has(square)) classes.push("target");
      const cell = el("div", { class: classes.join(" "), "data-square": square });
      if (piece) {
        const mine = (piece.black ? "black" : "white") === human;
        cell.append(el("span", { class: `piece ${mine ? "mine" : "theirs"}` }, PIECES[piece.kind]));
      }
      cell.addEventListener("click", () => clickSquare(square, piece));
      board.append(cell);
    }
  }
  const opponent = human === "black" ? "white" : "black";
  renderHand($("hand-bottom"), position.hand[human], true);
  renderHand($("hand-top"), position.hand[opponent], false);
  const mark = (color) => (color === "black" ? "☗" : "☖");
  $("name-bottom").textContent = `${mark(human)} you`;
  $("name-top").textContent = `${mark(opponent)} ${state.engine ? state.engine.name : "Keisei"}`;
  renderInfo();
}

function renderHand(node, hand, mine) {
  node.replaceChildren();
  for (const kind of HAND_ORDER) {
    if (!hand[kind]) continue;
    const label = `${PIECES[kind]}${hand[kind] > 1 ? hand[kind] : ""}`;
    if (!mine) { node.append(el("span", { class: "held" }, label)); continue; }
    const button = el("button", { "data-piece": kind, title: `drop a ${kind}` }, label);
    if (state.selected && state.selected.drop === kind) button.classList.add("selected");
    button.addEventListener("click", () => { state.selected = { drop: kind }; say(""); render(); });
    node.append(button);
  }
}

// The squares the selection may go to, from the legal moves the server listed.
function targetsOf(selected) {
  if (!selected || !state.game) return [];
  const prefix = selected.drop ? `${selected.drop}*` : selected.square;
  return state.game.legal.filter((move) => move.startsWith(prefix)).map((move) => move.slice(2, 4));
}

function clickSquare(square, piece) {
  const game = state.game;
  if (!game || game.over || game.thinking || game.turn !== game.human) return;
  const mine = piece && (piece.black ? "black" : "white") === game.human;
  if (mine && !(state.selected && state.selected.square === square)) {
    state.selected = { square };
    say("");
    render();
    return;
  }
  if (!state.selected || (state.selected.square === square)) { state.selected = null; render(); return; }
  const base = state.selected.drop ? `${state.selected.drop}*${square}` : `${state.selected.square}${square}`;
  const options = game.legal.filter((move) => move === base || move === `${base}+`);
  state.selected = null;
  if (options.length === 2) { askPromotion(base); return; }
  // one legal form, or none: the server plays it or says why it is not legal
  send(options.length === 1 ? options[0] : base);
}

function askPromotion(base) {
  state.pending = base;
  $("promotion").hidden = false;
  render();
}

function answerPromotion(promote) {
  const base = state.pending;
  state.pending = null;
  $("promotion").hidden = true;
  if (base) send(promote ? `${base}+` : base);
}

function say(text) { $("message").textContent = text; }

async function api(method, path, body) {
  const response = await fetch(path, { method, headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || `${response.status}`);
  return answer;
}

async function send(move) {
  try {
    take(await api("POST", `/api/games/${state.game.id}/move`, { move }));
    say("");
  } catch (error) {
    say(`refused: ${error.message}`);
    render();
  }
}

function take(game) {
  state.game = game;
  const id = game.id;
  $("save-kif").href = `/api/games/${id}/record.kif`;
  $("save-csa").href = `/api/games/${id}/record.csa`;
  for (const link of [$("save-kif"), $("save-csa")]) link.setAttribute("aria-disabled", "false");
  $("resign").disabled = game.over;
  render();
  clearTimeout(state.polling);
  if (game.thinking || (!game.over && game.turn !== game.human)) {
    state.polling = setTimeout(poll, 300);
  }
}

async function poll() {
  try {
    take(await api("GET", `/api/games/${state.game.id}`));
  } catch (error) {
    say(error.message);
  }
}

function renderInfo() {
  const game = state.game;
  const status = $("status");
  if (!game) { status.textContent = "choose a side and start a game"; return; }
  if (game.over) {
    status.textContent = game.winner === game.human ? `you win — ${game.result}`
      : game.winner ? `Keisei wins — ${game.result}` : game.result;
  } else if (game.error) {
    status.textContent = game.error;
  } else {
    status.textContent = game.thinking || game.turn !== game.human ? "Keisei is thinking…" : "your move";
  }
  status.dataset.state = game.over ? "over" : game.thinking ? "thinking" : "your-move";
  const engine = game.engine;
  $("evaluation").textContent = engine
    ? `Keisei played ${engine.move}${engine.mate ? " (a forced mate)" : ""}: its evaluation ${engine.value >= 0 ? "+" : ""}${engine.value.toFixed(2)} `
      + `(−1 lost … +1 won), ${engine.visits.toLocaleString("en-US")} visits in ${engine.seconds} s; it expects ${engine.pv.slice(1).join(" ") || "—"}`
    : "";
  const moves = $("moves");
  moves.replaceChildren(...game.moves.map((move, i) => {
    const black = (i % 2 === 0) === game.start.includes(" b ");
    return el("li", {}, `${i + 1}. ${black ? "☗" : "☖"}${move}`);
  }));
  moves.scrollTop = moves.scrollHeight;
}

async function newGame() {
  const seconds = Number($("movetime").value);
  try {
    take(await api("POST", "/api/games", { side: $("side").value,
      movetime: Math.round(Math.min(30, Math.max(0.01, seconds || 1)) * 1000) }));
    say("");
  } catch (error) {
    say(error.message);
  }
}

async function start() {
  $("new-game").addEventListener("click", newGame);
  $("resign").addEventListener("click", async () => {
    if (!state.game) return;
    try { take(await api("POST", `/api/games/${state.game.id}/resign`)); } catch (error) { say(error.message); }
  });
  $("promote-yes").addEventListener("click", () => answerPromotion(true));
  $("promote-no").addEventListener("click", () => answerPromotion(false));
  for (const link of [$("save-kif"), $("save-csa")]) link.setAttribute("aria-disabled", "true");
  try {
    state.engine = await api("GET", "/api/engine");
    $("engine-name").textContent = `${state.engine.name}, ${state.engine.movetime / 1000} s a move by default`;
    $("movetime").value = String(state.engine.movetime / 1000);
  } catch (error) { say(error.message); }
  render();
}

start();
