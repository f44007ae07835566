import ArgumentParser
import LoRAKit
#if canImport(Glibc)
import Glibc
#endif

/// `lorakit bench plot`: BENCHMARKS.md's comparison tables as bar charts (SVG), linked from the file.
///
/// Every table inside a `<!-- NAME:begin -->` … `<!-- NAME:end -->` block is read. A chart is drawn for
/// each pair of columns "LoRAKit X" / "PEER X" (the same X: GFLOP/s, prefill tok/s, …), and for each
/// column whose cells read "a → b" (base → adapted). Rows are the chart's categories, named by the table's
/// text columns. The charts go to OUT-DIR/NAME-N.svg; with --link, a line of image links is put right after
/// each block's end marker (outside the block, so `make bench` rewriting the block keeps it) and replaced
/// on the next run.
struct BenchPlot: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plot",
        abstract: "Draw BENCHMARKS.md's comparison tables as SVG bar charts (and link them from it with --link).")
    @Option(help: "The benchmarks file.") var markdown: String = "BENCHMARKS.md"
    @Option(help: "Folder for the charts (default: bench/plots beside the markdown file).") var outDir: String?
    @Flag(help: "Put links to the charts into the markdown file after each block.") var link = false

    func run() throws {
        try runReporting {
            let text = String(decoding: try readFile(markdown), as: UTF8.self)
            let mdDir = markdown.contains("/") ? String(markdown[..<markdown.lastIndex(of: "/")!]) : "."
            let dir = outDir ?? mdDir + "/bench/plots"
            try makeDirectories(dir)
            let charts = benchCharts(markdown: text)
            guard !charts.isEmpty else { throw LKError.invalidArgument("\(markdown): no comparison tables found") }
            var links: [String: [(String, String)]] = [:]
            for ch in charts {
                let path = dir + "/" + ch.file
                try SVG.write(barChartSVG(title: ch.title, subtitle: ch.subtitle, unit: ch.unit,
                                          categories: ch.categories, series: ch.series), to: path)
                print("wrote \(path)")
                links[ch.block, default: []].append((ch.unit, relativePath(path, from: mdDir)))
            }
            if link {
                try AtomicFile.write(path: markdown, bytes: Array(linkCharts(text, links).utf8))
                print("linked the charts from \(markdown)")
            }
        }
    }
}

struct BenchChart {
    var block: String
    var file: String
    var title: String
    var subtitle: String?
    var unit: String
    var categories: [String]
    var series: [BarSeries]
}

/// A table row's cells (without the outer pipes).
func tableCells(_ line: Substring) -> [String] {
    var s = line.trimmingCharacters()
    if s.hasPrefix("|") { s.removeFirst() }
    if s.hasSuffix("|") { s.removeLast() }
    return s.split(separator: "|", omittingEmptySubsequences: false).map { String($0).trimmingWhitespace() }
}

/// The leading number of a cell ("172.6 (135.8, 187.8)" → 172.6, "2.83" → 2.83, "128" → 128).
func leadingNumber(_ cell: String) -> Double? {
    var t = ""
    for ch in cell {
        if ch.isNumber || ch == "." || (ch == "-" && t.isEmpty) { t.append(ch) } else if !t.isEmpty { break } else if ch != " " { return nil }
    }
    return Double(t)
}

/// A cell that is a number, possibly followed by a bracketed note or a percent sign ("0.997 (0.978–1.007)").
func isNumericCell(_ cell: String) -> Bool {
    guard leadingNumber(cell) != nil else { return false }
    let rest = cell.trimmingWhitespace().drop { $0.isNumber || $0 == "." || $0 == "-" }.trimmingCharacters()
    return rest.isEmpty || rest.hasPrefix("(") || rest == "%"
}

func benchCharts(markdown: String) -> [BenchChart] {
    var charts: [BenchChart] = []
    var block: String? = nil
    var heading = ""
    var table: [[String]] = []
    var counts: [String: Int] = [:]
    func flush() {
        defer { table = [] }
        guard let b = block, table.count >= 3 else { return }
        let header = table[0]
        let rows = table.dropFirst(2).filter { $0.count == header.count }
        guard !rows.isEmpty else { return }
        // Category names: the leading columns up to the first one of numbers ("threads" counts as a name).
        var textCols: [Int] = []
        for i in header.indices {
            let isName = header[i].lowercased().hasPrefix("threads")
                || (!rows.allSatisfy { isNumericCell($0[i]) } && !rows.allSatisfy { $0[i].contains("→") })
            guard isName else { break }
            textCols.append(i)
        }
        let categories = rows.map { r in
            textCols.map { i in header[i].lowercased() == "threads" ? "\(r[i]) thr" : r[i] }
                .joined(separator: ", ").replacingBackticks()
        }
        func add(_ unit: String, _ series: [BarSeries]) {
            counts[b, default: 0] += 1
            charts.append(BenchChart(block: b, file: "\(b)-\(counts[b]!).svg", title: heading.isEmpty ? b : heading,
                                     subtitle: series.map(\.name).joined(separator: " vs ") + ": " + unit, unit: unit,
                                     categories: categories, series: series))
        }
        for (i, h) in header.enumerated() where h.hasPrefix("LoRAKit ") {
            let what = String(h.dropFirst("LoRAKit ".count))
            guard let j = header.indices.first(where: { $0 != i && header[$0].hasSuffix(" " + what) && !header[$0].hasPrefix("LoRAKit") }),
                  rows.contains(where: { leadingNumber($0[i]) != nil }) else { continue }
            let peer = String(header[j].dropLast(what.count + 1))
            add(what, [BarSeries(name: "LoRAKit", values: rows.map { leadingNumber($0[i]) }),
                       BarSeries(name: peer, values: rows.map { leadingNumber($0[j]) })])
        }
        for (i, h) in header.enumerated() where rows.allSatisfy({ $0[i].contains("→") }) {
            let (a, b2) = arrowNames(h)
            let values = rows.map { r -> (Double?, Double?) in
                let p = r[i].split(separator: "→", maxSplits: 1).map { String($0).trimmingWhitespace() }
                return (leadingNumber(p[0]), p.count > 1 ? leadingNumber(p[1]) : nil)
            }
            add(arrowUnit(h), [BarSeries(name: a, values: values.map(\.0)), BarSeries(name: b2, values: values.map(\.1))])
        }
    }
    for line in markdown.split(separator: "\n", omittingEmptySubsequences: false) {
        let t = line.trimmingCharacters()
        if t.hasPrefix("<!--"), t.hasSuffix(":begin -->") {
            block = String(t.dropFirst(4).dropLast(10)).trimmingWhitespace()
            heading = ""
        } else if t.hasPrefix("<!--"), t.hasSuffix(":end -->") {
            flush()
            block = nil
        } else if t.hasPrefix("#") {
            flush()
            heading = String(t.drop { $0 == "#" }).trimmingWhitespace()
        } else if t.hasPrefix("|") {
            table.append(tableCells(line))
        } else {
            flush()
        }
    }
    flush()
    return charts
}

/// "decode tok/s base → adapted" → ("base", "adapted").
func arrowNames(_ header: String) -> (String, String) {
    let parts = header.split(separator: "→", maxSplits: 1).map { String($0).trimmingWhitespace() }
    guard parts.count == 2 else { return ("before", "after") }
    let a = parts[0].split(separator: " ").last.map(String.init) ?? "before"
    let b = parts[1].split(separator: " ").first.map(String.init) ?? "after"
    return (a, b)
}

/// "decode tok/s base → adapted" → "decode tok/s".
func arrowUnit(_ header: String) -> String {
    let first = header.split(separator: "→", maxSplits: 1).first.map(String.init) ?? header
    var words = first.split(separator: " ").map(String.init)
    if !words.isEmpty { words.removeLast() }
    return words.joined(separator: " ")
}

/// Put a line of links after each block's end marker (replacing the line a previous run put there).
func linkCharts(_ text: String, _ links: [String: [(String, String)]]) -> String {
    let marker = "<!-- charts: lorakit bench plot -->"
    var out: [Substring] = []
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false)[...]
    while let line = lines.popFirst() {
        out.append(line)
        let t = line.trimmingCharacters()
        guard t.hasPrefix("<!--"), t.hasSuffix(":end -->") else { continue }
        let name = String(t.dropFirst(4).dropLast(8)).trimmingWhitespace()
        if let next = lines.first, next.hasSuffix(marker) { lines.removeFirst() }
        guard let ls = links[name], !ls.isEmpty else { continue }
        let items = ls.map { "[\($0.0)](\($0.1))" }
        out.append(Substring("Bar charts: " + items.joined(separator: " · ") + " " + marker))
    }
    return out.joined(separator: "\n")
}

func relativePath(_ path: String, from dir: String) -> String {
    if dir == "." { return path.hasPrefix("./") ? String(path.dropFirst(2)) : path }
    return path.hasPrefix(dir + "/") ? String(path.dropFirst(dir.count + 1)) : path
}

/// mkdir -p.
func makeDirectories(_ path: String) throws(LKError) {
    var cur = path.hasPrefix("/") ? "" : "."
    for comp in path.split(separator: "/") {
        cur += "/" + comp
        if mkdir(cur, 0o755) != 0 && errno != EEXIST {
            throw .io("\(cur): cannot create the folder: \(String(cString: strerror(errno)))")
        }
    }
}

extension Substring {
    func trimmingCharacters() -> String { String(self).trimmingWhitespace() }
}

extension String {
    func replacingBackticks() -> String { String(filter { $0 != "`" }) }
}
