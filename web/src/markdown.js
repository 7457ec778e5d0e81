// Model output -> safe HTML. markdown-it runs with html: false, so any HTML the model writes
// (<script>, <img onerror=...>) comes out as escaped text; DOMPurify then cleans the result a
// second time (no script, no event handler, no javascript: URL survives even if a renderer bug
// let one through), and the page's Content-Security-Policy (script-src 'self', set by kiln
// serve) forbids inline script as a third wall. Fenced code is highlighted by highlight.js
// (a few common languages, to keep the bundle small) and gets a copy button in app.js.
import DOMPurify from 'dompurify';
import MarkdownIt from 'markdown-it';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import c from 'highlight.js/lib/languages/c';
import cpp from 'highlight.js/lib/languages/cpp';
import css from 'highlight.js/lib/languages/css';
import diff from 'highlight.js/lib/languages/diff';
import go from 'highlight.js/lib/languages/go';
import java from 'highlight.js/lib/languages/java';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import markdown from 'highlight.js/lib/languages/markdown';
import python from 'highlight.js/lib/languages/python';
import rust from 'highlight.js/lib/languages/rust';
import shell from 'highlight.js/lib/languages/shell';
import sql from 'highlight.js/lib/languages/sql';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';

const languages = { bash, c, cpp, css, diff, go, java, javascript, json, markdown, python, rust, shell, sql, typescript, xml, yaml };
for (const [name, lang] of Object.entries(languages)) hljs.registerLanguage(name, lang);

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch]);
}

const md = new MarkdownIt({
  html: false, // raw HTML in model output is text, never markup
  linkify: false,
  breaks: true,
  highlight(code, lang) {
    const name = (lang || '').trim().split(/\s+/)[0].toLowerCase();
    let body;
    if (name && hljs.getLanguage(name)) {
      try {
        body = hljs.highlight(code, { language: name, ignoreIllegals: true }).value;
      } catch {
        body = escapeHtml(code);
      }
    } else {
      body = escapeHtml(code);
    }
    const label = name ? escapeHtml(name) : 'text';
    return `<pre class="code" data-lang="${label}"><code class="hljs">${body}</code></pre>`;
  },
});

// Links open in a new tab without handing it our window.
const defaultLink = md.renderer.rules.link_open || ((tokens, i, options, env, self) => self.renderToken(tokens, i, options));
md.renderer.rules.link_open = (tokens, i, options, env, self) => {
  tokens[i].attrSet('target', '_blank');
  tokens[i].attrSet('rel', 'noopener noreferrer');
  return defaultLink(tokens, i, options, env, self);
};

const purifyConfig = {
  ALLOWED_TAGS: ['a', 'b', 'blockquote', 'br', 'code', 'del', 'em', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr', 'i', 'li', 'ol', 'p', 'pre', 's', 'span', 'strong', 'sub', 'sup', 'table', 'tbody', 'td', 'th', 'thead', 'tr', 'ul'],
  ALLOWED_ATTR: ['href', 'target', 'rel', 'class', 'data-lang', 'title', 'start', 'align'],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
};

// Markdown text -> sanitized HTML string.
export function renderMarkdown(text) {
  return DOMPurify.sanitize(md.render(text || ''), purifyConfig);
}
