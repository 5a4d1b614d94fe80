// Two principal components of a set of vectors (power iteration with
// deflation): enough for a map of a sample of a collection.

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i += 1) s += a[i] * b[i];
  return s;
}

function topComponent(rows, dim) {
  let v = Array.from({ length: dim }, (_, i) => Math.sin(i + 1));
  for (let iteration = 0; iteration < 60; iteration += 1) {
    const next = new Array(dim).fill(0);
    for (const row of rows) {
      const p = dot(row, v);
      for (let i = 0; i < dim; i += 1) next[i] += p * row[i];
    }
    const norm = Math.sqrt(dot(next, next)) || 1;
    v = next.map((x) => x / norm);
  }
  return v;
}

/** [[x, y], ...] for each vector. */
export function project2d(vectors) {
  if (!vectors.length) return [];
  const dim = vectors[0].length;
  const mean = new Array(dim).fill(0);
  for (const v of vectors) for (let i = 0; i < dim; i += 1) mean[i] += v[i] / vectors.length;
  const centred = vectors.map((v) => v.map((x, i) => x - mean[i]));
  const first = topComponent(centred, dim);
  const deflated = centred.map((row) => {
    const p = dot(row, first);
    return row.map((x, i) => x - p * first[i]);
  });
  const second = topComponent(deflated, dim);
  return centred.map((row) => [dot(row, first), dot(row, second)]);
}
