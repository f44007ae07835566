import Testing
@testable import LoRAKit

@Test func partitionCovers() {
    for total in [0, 1, 7, 100] { for n in 1...4 {
        var all: [Int] = []
        for i in 0..<n { all += Array(partition(total, index: i, count: n)) }
        #expect(all == Array(0..<total))
    } }
}
