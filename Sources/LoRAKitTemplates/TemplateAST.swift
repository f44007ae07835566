// The syntax tree of a parsed chat template (TemplateParser.swift builds it, TemplateInterpreter.swift runs it).
// Nodes are values (Sendable), so a parsed template is shared by any number of concurrent renders.

import LoRAKitCore

/// A source position: 1-based line and column (in Unicode scalars).
struct JLoc: Sendable {
    var line: Int32
    var col: Int32
    var text: String { "line \(line), column \(col)" }
}

struct JExpr: Sendable {
    var kind: JExprKind
    var loc: JLoc
}

struct JKeyValue: Sendable {
    var key: JExpr
    var value: JExpr
}

struct JKwarg: Sendable {
    var name: String
    var value: JExpr
}

enum JBinOp: String, Sendable {
    case add = "+", sub = "-", mul = "*", div = "/", floorDiv = "//", mod = "%", pow = "**"
}

enum JCmpOp: String, Sendable {
    case eq = "==", ne = "!=", lt = "<", le = "<=", gt = ">", ge = ">=", isIn = "in", notIn = "not in"
}

struct JFilterCall: Sendable {
    var name: String
    var args: [JExpr]
    var kwargs: [JKwarg]
    var loc: JLoc
}

indirect enum JExprKind: Sendable {
    case const(TemplateValue)
    case name(String)
    case list([JExpr])
    case tuple([JExpr])
    case dict([JKeyValue])
    case attr(JExpr, String)
    case item(JExpr, JExpr)
    case slice(JExpr, JExpr?, JExpr?, JExpr?)
    case call(JExpr, [JExpr], [JKwarg])
    case filter(JExpr, JFilterCall)
    case test(JExpr, String, [JExpr], negated: Bool)
    case neg(JExpr)
    case pos(JExpr)
    case not(JExpr)
    case and(JExpr, JExpr)
    case or(JExpr, JExpr)
    case binary(JBinOp, JExpr, JExpr)
    case concat([JExpr])
    case compare(JExpr, [(JCmpOp, JExpr)])
    case cond(test: JExpr, then: JExpr, otherwise: JExpr?)
}

enum JTarget: Sendable {
    case name(String)
    case names([String])
    case attr(String, String)
}

struct JBranch: Sendable {
    var cond: JExpr
    var body: [JStmt]
}

struct JForLoop: Sendable {
    var target: JTarget
    var iter: JExpr
    var filter: JExpr?
    var body: [JStmt]
    var elseBody: [JStmt]
}

struct JMacroDef: Sendable {
    var name: String
    var params: [(String, JExpr?)]
    var body: [JStmt]
}

struct JStmt: Sendable {
    var kind: JStmtKind
    var loc: JLoc
}

indirect enum JStmtKind: Sendable {
    case text(String)
    case output(JExpr)
    case ifChain([JBranch], [JStmt])
    case forLoop(JForLoop)
    case set(JTarget, JExpr)
    case setBlock(JTarget, [JFilterCall], [JStmt])
    case macro(JMacroDef)
    case filterBlock([JFilterCall], [JStmt])
    case block([JStmt])
    case breakLoop
    case continueLoop
}
