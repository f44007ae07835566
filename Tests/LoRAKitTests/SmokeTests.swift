import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining

@Test func partitionCovers() {
    for total in [0, 1, 7, 100] { for n in 1...4 {
        var all: [Int] = []
        for i in 0..<n { all += Array(partition(total, index: i, count: n)) }
        #expect(all == Array(0..<total))
    } }
}
