import LoRAKit

/// Small SVG charts written by the CLI: the training loss curve (`lorakit train --plot`) and the bar charts
/// of BENCHMARKS.md's comparison tables (`lorakit bench plot`). Plain SVG 1.1 text, no dependencies; files
/// are replaced atomically, so a browser or viewer never reads half a picture.
enum SVG {
    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]

    static func escape(_ s: String) -> String {
        var o = ""
        for c in s {
            switch c {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "\"": o += "&quot;"
            default: o.append(c)
            }
        }
        return o
    }

    /// A number with up to `digits` decimals and no trailing zeros (axis labels).
    static func num(_ x: Double, _ digits: Int = 3) -> String {
        guard x.isFinite else { return "\(x)" }
        var s = fixed(x, digits)
        if s.contains(".") {
            while s.hasSuffix("0") { s.removeLast() }
            if s.hasSuffix(".") { s.removeLast() }
        }
        return s == "-0" ? "0" : s
    }

    /// Coordinates with one decimal (keeps files small and diffs stable).
    static func c(_ x: Double) -> String { num(x, 1) }

    /// "Nice" tick values covering [lo, hi] (1, 2, 2.5 or 5 × 10^k steps), about `count` of them.
    static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        guard hi > lo, lo.isFinite, hi.isFinite else { return [lo] }
        let raw = (hi - lo) / Double(count)
        var p = 1.0
        while p * 10 <= raw { p *= 10 }
        while p > raw { p /= 10 }
        let step = [1.0, 2.0, 2.5, 5.0, 10.0].map { $0 * p }.first { $0 >= raw } ?? 10 * p
        var t = (lo / step).rounded(.down) * step
        var out: [Double] = []
        while t <= hi + step * 1e-9 {
            if t >= lo - step * 1e-9 { out.append(abs(t) < step * 1e-9 ? 0 : t) }
            t += step
        }
        return out
    }

    static func niceMax(_ hi: Double) -> Double {
        guard hi > 0, hi.isFinite else { return 1 }
        let t = ticks(0, hi * 1.05)
        let step = t.count > 1 ? t[1] - t[0] : hi
        return ((hi * 1.05) / step).rounded(.up) * step
    }

    static func write(_ svg: String, to path: String) throws(LKError) {
        try AtomicFile.write(path: path, bytes: Array(svg.utf8))
    }
}

/// One logged training step, as the loss curve needs it.
struct LossPoint {
    var step: Int
    var loss: Double
    var lr: Double
    var validLoss: Double?
}

/// The training log (`--log`, one JSON object per step) as loss points. A step number that does not
/// increase starts over from there (a resumed run re-does the steps after its checkpoint; a new run in
/// the same log starts at 1), so the points are those of the run the log ends with.
func lossPoints(logPath: String) -> [LossPoint] {
    guard let bytes = try? readFile(logPath) else { return [] }
    var points: [LossPoint] = []
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
        guard let v = try? JSON.parse(Array(line.utf8)), case .object(let o) = v else { continue }
        var d: [String: Double] = [:]
        for (k, x) in o { if let n = x.double { d[k] = n } }  // "step": 3 parses as .int
        guard let s = d["step"], let loss = d["loss"] else { continue }
        let step = Int(s)
        while let last = points.last, last.step >= step { points.removeLast() }
        points.append(LossPoint(step: step, loss: loss, lr: d["lr"] ?? 0, validLoss: d["valid_loss"]))
    }
    return points
}

/// The loss curve: training loss per step (line), validation loss (line with dots; `initialValid` at step
/// 0 when known) on the left axis, the learning rate (dashed) on the right axis.
func lossCurveSVG(_ points: [LossPoint], totalSteps: Int, initialValid: Double?, title: String) -> String {
    let w = 820.0, h = 440.0
    let left = 70.0, right = 80.0, top = 56.0, bottom = 56.0
    let pw = w - left - right, ph = h - top - bottom
    let maxStep = Double(max(totalSteps, points.last?.step ?? 1, 1))
    var valid: [(Double, Double)] = []
    if let v = initialValid, v.isFinite { valid.append((0, v)) }
    for p in points { if let v = p.validLoss, v.isFinite { valid.append((Double(p.step), v)) } }
    let train = points.filter { $0.loss.isFinite }.map { (Double($0.step), $0.loss) }
    let lossMax = SVG.niceMax((train.map(\.1) + valid.map(\.1)).max() ?? 1)
    let lrMax = SVG.niceMax(points.map(\.lr).filter(\.isFinite).max() ?? 0)
    func x(_ s: Double) -> Double { left + pw * s / maxStep }
    func yLoss(_ l: Double) -> Double { top + ph * (1 - min(max(l, 0), lossMax) / lossMax) }
    func yLR(_ r: Double) -> Double { top + ph * (1 - min(max(r, 0), lrMax) / lrMax) }
    var s = """
    <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
    <rect width="100%" height="100%" fill="white"/>
    <text x="\(SVG.c(w / 2))" y="22" text-anchor="middle" font-size="15" font-weight="bold">\(SVG.escape(title))</text>

    """
    var sub = "step \(points.last?.step ?? 0)/\(totalSteps)"
    if let l = train.last?.1 { sub += ", training loss \(fixed(l, 4))" }
    if let v = valid.last?.1 { sub += ", validation loss \(fixed(v, 4))" }
    s += "<text x=\"\(SVG.c(w / 2))\" y=\"40\" text-anchor=\"middle\" fill=\"#555\">\(SVG.escape(sub))</text>\n"
    // Grid and axes.
    for t in SVG.ticks(0, lossMax) {
        let y = yLoss(t)
        s += "<line x1=\"\(SVG.c(left))\" y1=\"\(SVG.c(y))\" x2=\"\(SVG.c(left + pw))\" y2=\"\(SVG.c(y))\" stroke=\"#e5e5e5\"/>"
        s += "<text x=\"\(SVG.c(left - 6))\" y=\"\(SVG.c(y + 4))\" text-anchor=\"end\">\(SVG.num(t))</text>\n"
    }
    for t in SVG.ticks(0, maxStep, count: 8) {
        let xx = x(t)
        s += "<line x1=\"\(SVG.c(xx))\" y1=\"\(SVG.c(top + ph))\" x2=\"\(SVG.c(xx))\" y2=\"\(SVG.c(top + ph + 5))\" stroke=\"#333\"/>"
        s += "<text x=\"\(SVG.c(xx))\" y=\"\(SVG.c(top + ph + 19))\" text-anchor=\"middle\">\(SVG.num(t, 0))</text>\n"
    }
    if lrMax > 0 {
        for t in SVG.ticks(0, lrMax) {
            s += "<text x=\"\(SVG.c(left + pw + 6))\" y=\"\(SVG.c(yLR(t) + 4))\" fill=\"#777\">\(t == 0 ? "0" : sci(t))</text>\n"
        }
    }
    s += "<rect x=\"\(SVG.c(left))\" y=\"\(SVG.c(top))\" width=\"\(SVG.c(pw))\" height=\"\(SVG.c(ph))\" fill=\"none\" stroke=\"#333\"/>\n"
    s += "<text x=\"\(SVG.c(left + pw / 2))\" y=\"\(SVG.c(h - 12))\" text-anchor=\"middle\">optimizer step</text>\n"
    s += "<text transform=\"translate(18 \(SVG.c(top + ph / 2))) rotate(-90)\" text-anchor=\"middle\">loss (mean cross-entropy)</text>\n"
    s += "<text transform=\"translate(\(SVG.c(w - 14)) \(SVG.c(top + ph / 2))) rotate(90)\" text-anchor=\"middle\" fill=\"#777\">learning rate</text>\n"
    func polyline(_ pts: [(Double, Double)], color: String, width: Double, dash: String? = nil) -> String {
        guard !pts.isEmpty else { return "" }
        let coords = pts.map { "\(SVG.c($0.0)),\(SVG.c($0.1))" }.joined(separator: " ")
        return "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"\(SVG.num(width, 1))\"\(dash.map { " stroke-dasharray=\"\($0)\"" } ?? "") points=\"\(coords)\"/>\n"
    }
    if lrMax > 0 {
        s += polyline(points.map { (x(Double($0.step)), yLR($0.lr)) }, color: "#999", width: 1.2, dash: "5,4")
    }
    s += polyline(train.map { (x($0.0), yLoss($0.1)) }, color: SVG.palette[0], width: 1.6)
    s += polyline(valid.map { (x($0.0), yLoss($0.1)) }, color: SVG.palette[1], width: 2)
    for (st, v) in valid {
        s += "<circle cx=\"\(SVG.c(x(st)))\" cy=\"\(SVG.c(yLoss(v)))\" r=\"3.5\" fill=\"\(SVG.palette[1])\"/>\n"
    }
    // Legend.
    let items: [(String, String, String?)] = [("training loss", SVG.palette[0], nil), ("validation loss", SVG.palette[1], nil),
                                              ("learning rate (right axis)", "#999", "5,4")]
    let lx = left + pw - 200
    var ly = top + 16
    s += "<rect x=\"\(SVG.c(lx - 8))\" y=\"\(SVG.c(ly - 12))\" width=\"204\" height=\"58\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>\n"
    for (name, color, dash) in items {
        s += "<line x1=\"\(SVG.c(lx))\" y1=\"\(SVG.c(ly - 4))\" x2=\"\(SVG.c(lx + 24))\" y2=\"\(SVG.c(ly - 4))\" stroke=\"\(color)\" stroke-width=\"2\"\(dash.map { " stroke-dasharray=\"\($0)\"" } ?? "")/>"
        s += "<text x=\"\(SVG.c(lx + 30))\" y=\"\(SVG.c(ly))\">\(SVG.escape(name))</text>\n"
        ly += 17
    }
    s += "</svg>\n"
    return s
}

/// A category label without its bracketed remarks, at most 56 characters.
func shortLabel(_ label: String) -> String {
    var out = ""
    var depth = 0
    for ch in label {
        if ch == "(" { depth += 1 } else if ch == ")" { depth = max(0, depth - 1) } else if depth == 0 { out.append(ch) }
    }
    var t = out.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
    while t.hasSuffix(",") { t.removeLast() }
    if t.isEmpty { t = label }
    return t.count > 56 ? String(t.prefix(55)) + "…" : t
}

/// One series of a bar chart: a name and one value per category (nil: missing).
struct BarSeries {
    var name: String
    var values: [Double?]
}

/// Grouped horizontal bars: one group per category (row of the table), one bar per series, the value
/// written at the end of each bar.
func barChartSVG(title: String, subtitle: String?, unit: String, categories: [String], series: [BarSeries]) -> String {
    let categories = categories.map(shortLabel)
    let labelW = min(390.0, max(90.0, Double(categories.map(\.count).max() ?? 10) * 6.6 + 16))
    let w = 540.0 + labelW
    let left = labelW, right = 70.0, top = subtitle == nil ? 46.0 : 62.0
    let barH = 16.0, gap = 3.0, groupGap = 14.0
    let groupH = Double(series.count) * (barH + gap) - gap
    let legendH = 24.0
    let ph = Double(categories.count) * (groupH + groupGap) - groupGap
    let h = top + ph + 40 + legendH
    let pw = w - left - right
    let maxV = SVG.niceMax(series.flatMap { $0.values.compactMap { $0 } }.filter(\.isFinite).max() ?? 1)
    func x(_ v: Double) -> Double { left + pw * max(0, v) / maxV }
    var s = """
    <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
    <rect width="100%" height="100%" fill="white"/>
    <text x="\(SVG.c(w / 2))" y="22" text-anchor="middle" font-size="15" font-weight="bold">\(SVG.escape(title))</text>

    """
    if let sub = subtitle {
        s += "<text x=\"\(SVG.c(w / 2))\" y=\"42\" text-anchor=\"middle\" fill=\"#555\">\(SVG.escape(sub))</text>\n"
    }
    for t in SVG.ticks(0, maxV) {
        s += "<line x1=\"\(SVG.c(x(t)))\" y1=\"\(SVG.c(top - 4))\" x2=\"\(SVG.c(x(t)))\" y2=\"\(SVG.c(top + ph))\" stroke=\"#e5e5e5\"/>"
        s += "<text x=\"\(SVG.c(x(t)))\" y=\"\(SVG.c(top + ph + 16))\" text-anchor=\"middle\">\(SVG.num(t))</text>\n"
    }
    s += "<text x=\"\(SVG.c(left + pw / 2))\" y=\"\(SVG.c(top + ph + 32))\" text-anchor=\"middle\">\(SVG.escape(unit))</text>\n"
    var y = top
    for (ci, cat) in categories.enumerated() {
        s += "<text x=\"\(SVG.c(left - 8))\" y=\"\(SVG.c(y + groupH / 2 + 4))\" text-anchor=\"end\">\(SVG.escape(cat))</text>\n"
        for (si, se) in series.enumerated() {
            let by = y + Double(si) * (barH + gap)
            guard ci < se.values.count, let v = se.values[ci], v.isFinite else { continue }
            s += "<rect x=\"\(SVG.c(left))\" y=\"\(SVG.c(by))\" width=\"\(SVG.c(x(v) - left))\" height=\"\(SVG.c(barH))\" fill=\"\(SVG.palette[si % SVG.palette.count])\"/>"
            s += "<text x=\"\(SVG.c(x(v) + 4))\" y=\"\(SVG.c(by + barH - 4))\">\(SVG.num(v, 2))</text>\n"
        }
        y += groupH + groupGap
    }
    s += "<line x1=\"\(SVG.c(left))\" y1=\"\(SVG.c(top - 4))\" x2=\"\(SVG.c(left))\" y2=\"\(SVG.c(top + ph))\" stroke=\"#333\"/>\n"
    var lx = left
    let ly = h - 12
    for (si, se) in series.enumerated() {
        s += "<rect x=\"\(SVG.c(lx))\" y=\"\(SVG.c(ly - 10))\" width=\"12\" height=\"12\" fill=\"\(SVG.palette[si % SVG.palette.count])\"/>"
        s += "<text x=\"\(SVG.c(lx + 17))\" y=\"\(SVG.c(ly))\">\(SVG.escape(se.name))</text>\n"
        lx += 30 + Double(se.name.count) * 7
    }
    s += "</svg>\n"
    return s
}
