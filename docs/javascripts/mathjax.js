// MathJax settings for pymdownx.arithmatex (generic mode). MathJax itself is vendored
// under javascripts/mathjax/ (see SOURCE.txt there), so formulas render offline.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// Re-typeset after an instant page change. No clearCache(): it empties the font's glyph
// style sheet that the first typeset filled, and every formula is then drawn blank.
document$.subscribe(() => {
  if (window.MathJax && MathJax.typesetPromise) {
    MathJax.typesetClear();
    MathJax.texReset();
    MathJax.typesetPromise();
  }
});
