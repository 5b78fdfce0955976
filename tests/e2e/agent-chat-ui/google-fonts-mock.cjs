// next/font/google fetches its CSS from fonts.googleapis.com while compiling. Offline, `next dev`
// retries three times per font and falls back; with NEXT_FONT_GOOGLE_MOCKED_RESPONSES pointing
// here it gets, for any URL, a face that uses the locally installed font (no file to download).
module.exports = new Proxy(
  {},
  {
    get: (_, url) =>
      typeof url === "string"
        ? "@font-face {\n  font-family: 'Inter';\n  font-style: normal;\n  font-weight: 100 900;\n  font-display: swap;\n  src: local('Inter'), local('Arial');\n}\n"
        : undefined,
  },
);
