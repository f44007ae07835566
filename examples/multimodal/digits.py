"""The data side of the multimodal example: UCI handwritten digits, a frozen patch encoder, a
logistic-regression baseline, a confusion table and a contact sheet. Standard library only.

The digits (1797 images, 8x8 pixels with values 0..16, and their labels) ship inside scikit-learn's
wheel as sklearn/datasets/data/digits.csv.gz. `load_digits()` fetches the wheel once with
`pip download --no-deps scikit-learn`, reads that one file and caches it as CSV under
~/.cache/lorakit (or $LORAKIT_CACHE); scikit-learn itself is never installed or imported.
"""
import gzip
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
HELD_OUT = 360  # 20 % of 1797, stratified


def cache_dir():
    d = os.environ.get("LORAKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lorakit")
    os.makedirs(d, exist_ok=True)
    return d


def load_digits():
    """[(pixels: list of 64 ints 0..16, label: int)] in the file's order."""
    path = os.path.join(cache_dir(), "digits.csv")
    if not os.path.exists(path):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
                            "scikit-learn"], check=True)
            wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
            if not wheels:
                raise RuntimeError("pip download scikit-learn gave no wheel")
            with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
                raw = gzip.decompress(z.read("sklearn/datasets/data/digits.csv.gz"))
        tmp_path = path + ".tmp"
        with open(tmp_path, "wb") as f:
            f.write(raw)
        os.replace(tmp_path, path)  # atomic: a crash never leaves half a cache file
    rows = []
    with open(path) as f:
        for line in f:
            v = [int(float(x)) for x in line.strip().split(",")]
            if len(v) != 65 or not all(0 <= p <= 16 for p in v[:64]) or not 0 <= v[64] <= 9:
                raise ValueError(f"{path}: malformed row {len(rows) + 1}")
            rows.append((v[:64], v[64]))
    if len(rows) != 1797:
        raise ValueError(f"{path}: {len(rows)} images, expected 1797")
    return rows


def split(rows, seed=0, held_out=HELD_OUT):
    """A fixed, seeded, stratified split: (train, test) lists of (pixels, label). Each class gives its
    share of the held-out images (largest remainders get the rounding), chosen by a seeded shuffle."""
    by_class = {c: [i for i, (_, y) in enumerate(rows) if y == c] for c in range(10)}
    exact = {c: len(ix) * held_out / len(rows) for c, ix in by_class.items()}
    take = {c: int(math.floor(e)) for c, e in exact.items()}
    for c in sorted(exact, key=lambda c: (-(exact[c] - take[c]), c))[: held_out - sum(take.values())]:
        take[c] += 1
    rng = random.Random(seed)
    test_ix = set()
    for c in range(10):
        ix = list(by_class[c])
        rng.shuffle(ix)
        test_ix.update(ix[: take[c]])
    train = [rows[i] for i in range(len(rows)) if i not in test_ix]
    test = [rows[i] for i in sorted(test_ix)]
    return train, test


def encode(pixels):
    """The frozen vision encoder: the four 4x4 quadrants (top-left, top-right, bottom-left,
    bottom-right) as 16-value patch vectors, scaled from 0..16 to -1..1. Returns 4 * 16 floats."""
    out = []
    for qr in (0, 4):
        for qc in (0, 4):
            for r in range(qr, qr + 4):
                for c in range(qc, qc + 4):
                    out.append(pixels[r * 8 + c] / 8.0 - 1.0)
    return out


PATCHES, PATCH_FEATURES = 4, 16


# ---------------------------------------------------------------------------------------------------
# Baseline: multinomial logistic regression on the 64 pixels (mini-batch gradient descent)
# ---------------------------------------------------------------------------------------------------

def train_baseline(train, epochs=30, lr=0.5, l2=1e-4, seed=0):
    """Weights [10][65] (the last column is the bias) of softmax regression on pixels / 16."""
    rng = random.Random(seed)
    w = [[0.0] * 65 for _ in range(10)]
    data = [([p / 16.0 for p in x] + [1.0], y) for x, y in train]
    batch = 32
    for epoch in range(epochs):
        rng.shuffle(data)
        step = lr / (1 + epoch * 0.1)
        for b in range(0, len(data), batch):
            grad = [[0.0] * 65 for _ in range(10)]
            chunk = data[b:b + batch]
            for x, y in chunk:
                z = [sum(wi * xi for wi, xi in zip(wc, x)) for wc in w]
                m = max(z)
                e = [math.exp(v - m) for v in z]
                s = sum(e)
                for c in range(10):
                    g = e[c] / s - (1.0 if c == y else 0.0)
                    if g != 0.0:
                        gc = grad[c]
                        for k in range(65):
                            gc[k] += g * x[k]
            scale = step / len(chunk)
            for c in range(10):
                wc, gc = w[c], grad[c]
                for k in range(65):
                    wc[k] -= scale * gc[k] + step * l2 * wc[k]
    return w


def predict_baseline(w, pixels):
    x = [p / 16.0 for p in pixels] + [1.0]
    z = [sum(wi * xi for wi, xi in zip(wc, x)) for wc in w]
    return max(range(10), key=lambda c: z[c])


# ---------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------

def confusion_table(labels, answers):
    """A 10x10 table as text: rows are true digits, columns the answers (digits; '?' for an answer that
    is no digit word)."""
    cols = list(range(10)) + [None]
    counts = {(t, a): 0 for t in range(10) for a in cols}
    for t, a in zip(labels, answers):
        counts[(t, a if a in range(10) else None)] += 1
    lines = ["true\\ans " + " ".join(f"{c:>4}" for c in range(10)) + "    ?"]
    for t in range(10):
        lines.append(f"{t:>9} " + " ".join(f"{counts[(t, a)]:>4}" for a in cols))
    return "\n".join(lines)


# A 3x5 pixel font for the digits and '?', to label the contact sheet.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "?": "111001011000010",
}


def write_png(path, width, height, pixel):
    """An RGB PNG from pixel(x, y) -> (r, g, b), written atomically."""
    raw = bytearray()
    for y in range(height):
        raw.append(0)
        for x in range(width):
            raw.extend(pixel(x, y))

    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b""))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)


def contact_sheet(path, images, labels, answers, columns=10, scale=6):
    """Images (64 pixels each) in a grid, each with a green frame when the answer is right and a red one
    when it is wrong, and the answer drawn under it."""
    n = len(images)
    rows = (n + columns - 1) // columns
    cell_w = 8 * scale + 8
    cell_h = 8 * scale + 8 + 5 * 2 + 4
    width, height = columns * cell_w, rows * cell_h

    def pixel(x, y):
        i = (y // cell_h) * columns + x // cell_w
        if i >= n:
            return (255, 255, 255)
        cx, cy = x % cell_w, y % cell_h
        ok = answers[i] == labels[i]
        frame = (40, 160, 60) if ok else (210, 40, 40)
        box = 8 * scale + 8
        if cy < box:
            if cx < 2 or cx >= cell_w - 2 or cy < 2 or cy >= box - 2:
                return frame
            px, py = (cx - 4) // scale, (cy - 4) // scale
            if cx >= 4 and cy >= 4 and px < 8 and py < 8:
                v = 255 - images[i][py * 8 + px] * 255 // 16
                return (v, v, v)
            return (255, 255, 255)
        # the answer, in the 3x5 font at 2x, centred under the image
        glyph = _FONT[str(answers[i]) if answers[i] in range(10) else "?"]
        gx, gy = (cx - (cell_w // 2 - 3)) // 2, (cy - box - 2) // 2
        if 0 <= gx < 3 and 0 <= gy < 5 and cx >= cell_w // 2 - 3 and cy >= box + 2 and glyph[gy * 3 + gx] == "1":
            return frame
        return (255, 255, 255)

    write_png(path, width, height, pixel)
