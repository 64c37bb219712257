import XCTest
import CBurstABI
@testable import BurstAttention

/// The exported C functions, called in-process (the C, C++ and Python
/// clients under mpirun test the same functions from outside).
final class ABITests: XCTestCase {
    func testConfigInitDefaultsAndVersion() {
        var c = burst_attention_config()
        _burst_attention_config_init(&c)
        XCTAssertEqual(Int(c.struct_size), MemoryLayout<burst_attention_config>.size)
        XCTAssertEqual(c.window_left, -1)
        XCTAssertEqual(c.window_right, -1)
        XCTAssertEqual(c.layout, Int32(BURST_LAYOUT_BSHD))
        XCTAssertEqual(c.pattern, Int32(BURST_PATTERN_BURST))
        XCTAssertEqual(c.batch, 0)
        XCTAssertEqual(_burst_version(), UInt32(BURST_VERSION_MAJOR * 10000 + BURST_VERSION_MINOR * 100 + BURST_VERSION_PATCH))
        XCTAssertEqual(String(cString: _burst_status_string(BURST_ERROR_TIMEOUT)), "BURST_ERROR_TIMEOUT")
        XCTAssertEqual(String(cString: _burst_status_string(burst_status(rawValue: 99))), "BURST_ERROR_UNKNOWN")
    }

    func testSelfContextForwardBackwardAndErrors() {
        var context: OpaquePointer?
        XCTAssertEqual(_burst_context_create_self(&context), BURST_OK)
        defer { _burst_context_destroy(context) }
        var rank: Int32 = -1, size: Int32 = -1
        XCTAssertEqual(_burst_context_rank(context, &rank, &size), BURST_OK)
        XCTAssertEqual(rank, 0); XCTAssertEqual(size, 1)

        var c = burst_attention_config()
        _burst_attention_config_init(&c)
        c.batch = 1; c.seq_len_local = 5; c.num_heads_q = 2; c.num_heads_kv = 2; c.head_dim = 4
        var plan: OpaquePointer?
        c.struct_size = 8
        XCTAssertEqual(_burst_plan_create(context, &c, &plan), BURST_ERROR_VERSION)
        XCTAssertTrue(String(cString: _burst_last_error()).contains("struct_size"))
        c.struct_size = UInt32(MemoryLayout<burst_attention_config>.size)
        c.mask = 5
        XCTAssertEqual(_burst_plan_create(context, &c, &plan), BURST_ERROR_INVALID_ARGUMENT)
        c.mask = 1
        XCTAssertEqual(_burst_plan_create(context, &c, &plan), BURST_OK)
        defer { _burst_plan_destroy(plan) }

        let x = [Float](repeating: 0.25, count: 40)
        var out = [Float](repeating: 0, count: 40), lse = [Float](repeating: 0, count: 10)
        XCTAssertEqual(_burst_forward(plan, x, x, x, &out, &lse), BURST_OK)
        XCTAssertEqual(out, [Float](repeating: 0.25, count: 40))
        XCTAssertEqual(_burst_forward(plan, nil, x, x, &out, &lse), BURST_ERROR_INVALID_ARGUMENT)
        XCTAssertTrue(String(cString: _burst_last_error()).contains("q is NULL"))
        var dq = out, dk = out, dv = out
        XCTAssertEqual(_burst_backward(plan, x, x, x, out, lse, x, &dq, &dk, &dv), BURST_OK)

        var stats = burst_stats()
        XCTAssertEqual(_burst_plan_stats(plan, &stats), BURST_ERROR_VERSION)
        stats.struct_size = UInt32(MemoryLayout<burst_stats>.size)
        XCTAssertEqual(_burst_plan_stats(plan, &stats), BURST_OK)
        XCTAssertEqual(stats.bytes_sent, 0)
        XCTAssertEqual(stats.steps_computed, 1)
        XCTAssertEqual(_burst_forward(nil, x, x, x, &out, &lse), BURST_ERROR_INVALID_ARGUMENT)
        XCTAssertEqual(_burst_context_create_loopback(0, nil), BURST_ERROR_INVALID_ARGUMENT)
    }
}
