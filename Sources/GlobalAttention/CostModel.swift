/// BURST_PATTERN_AUTO: picks the pattern a plan runs.
///
/// STUB: always BURST until the cost model is written (issue 7).
enum CostModel {
    static func choose(_ config: AttentionConfig, tokens: TokenLayout) -> AttentionConfig.Pattern {
        .burst
    }
}
