// A small, safe markdown renderer for card details: the subset the cards use.
//
// The text is HTML-escaped first, so nothing in it can become markup; only the constructs below
// are then turned into elements: paragraphs (blank lines), bulleted lists ("- " or "* "), numbered
// lists ("1. "), **bold**, *italic*, `code` and [links](https://...). A link whose target is not
// http(s) stays text (no javascript:, data: or relative targets); links open in a new tab without
// a referrer.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const LINK = /\[([^\]\n]+)\]\(([^)\s]+)\)/g;
const SLOT = /\u0000(\d+)\u0000/g;

function emphasis(escaped) {
  return escaped
    .replace(/`([^`\n]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^\s*](?:[^*]*?[^\s*])?)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*\w])\*([^\s*](?:[^*]*?[^\s*])?)\*(?![*\w])/g, "$1<em>$2</em>");
}

// One line or paragraph of escaped text: links set aside first, so that emphasis never reaches
// into a URL, then put back with their labels formatted.
function inline(escaped) {
  const links = [];
  const text = escaped.replace(LINK, (whole, label, url) => {
    const target = url.replace(/&amp;/g, "&");
    if (!/^https?:\/\/[^\s]+$/i.test(target)) {
      return whole;
    }
    links.push(`<a href="${url}" target="_blank" rel="noopener noreferrer">${emphasis(label)}</a>`);
    return `\u0000${links.length - 1}\u0000`;
  });
  return emphasis(text).replace(SLOT, (_, n) => links[Number(n)]);
}

const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;

// Markdown text -> HTML string, every character of the input escaped.
export function renderMarkdown(source) {
  const text = String(source ?? "").replace(/\u0000/g, "");
  const lines = escapeHtml(text).replace(/\r\n?/g, "\n").split("\n");
  const html = [];
  let paragraph = [];
  let list = null; // { tag, items: [lines...] }

  const closeParagraph = () => {
    if (paragraph.length) {
      html.push(`<p>${inline(paragraph.join(" "))}</p>`);
      paragraph = [];
    }
  };
  const closeList = () => {
    if (list) {
      const items = list.items.map((item) => `<li>${inline(item.join(" "))}</li>`).join("");
      const start = list.tag === "ol" && list.start !== 1 ? ` start="${list.start}"` : "";
      html.push(`<${list.tag}${start}>${items}</${list.tag}>`);
      list = null;
    }
  };

  for (const line of lines) {
    const bullet = line.match(BULLET);
    const numbered = bullet ? null : line.match(NUMBERED);
    if (!line.trim()) {
      closeParagraph();
      closeList();
    } else if (bullet || numbered) {
      closeParagraph();
      const tag = bullet ? "ul" : "ol";
      if (!list || list.tag !== tag) {
        closeList();
        list = { tag, start: numbered ? Number(numbered[1]) : 1, items: [] };
      }
      list.items.push([bullet ? bullet[1] : numbered[2]]);
    } else if (list && /^\s+\S/.test(line)) {
      list.items[list.items.length - 1].push(line.trim()); // an item's continuation line
    } else {
      closeList();
      paragraph.push(line.trim());
    }
  }
  closeParagraph();
  closeList();
  return html.join("\n");
}

// Put rendered markdown into an element.
export function setMarkdown(element, source) {
  element.innerHTML = renderMarkdown(source);
}
