import XCTest
import CBurstABI
@testable import BurstAttention
import LocalAttention

/// The exported C functions, called in-process (the C, C++ and Python
/// clients under mpirun test the same functions from outside).
final class ABITests: XCTestCase {
    func testConfigInitDefaultsAndVersion() {
        var c = burst_attention_config()
        XCTAssertEqual(_burst_attention_config_init_sized(&c, MemoryLayout<burst_attention_config>.size), BURST_OK)
        XCTAssertEqual(Int(c.struct_size), MemoryLayout<burst_attention_config>.size)
        XCTAssertEqual(c.compute, Int32(BURST_COMPUTE_DEFAULT))
        XCTAssertEqual(c.window_left, -1)
        XCTAssertEqual(c.window_right, -1)
        XCTAssertEqual(c.layout, Int32(BURST_LAYOUT_BSHD))
        XCTAssertEqual(c.pattern, Int32(BURST_PATTERN_BURST))
        XCTAssertEqual(c.batch, 0)
        XCTAssertEqual(_burst_version(), UInt32(BURST_VERSION_MAJOR * 10000 + BURST_VERSION_MINOR * 100 + BURST_VERSION_PATCH))
        XCTAssertEqual(String(cString: _burst_status_string(BURST_ERROR_TIMEOUT)), "BURST_ERROR_TIMEOUT")
        XCTAssertEqual(String(cString: _burst_status_string(burst_status(rawValue: 99))), "BURST_ERROR_UNKNOWN")
    }

    /// Since 0.7 the config has compute (+ reserved0): the 0.4-0.6 size
    /// (it ended at timeout_seconds) is an older released size, read as far
    /// as it goes; the unsized init (0.4 binaries) writes exactly that size.
    func testConfigSizesSince07() {
        XCTAssertEqual(MemoryLayout<burst_attention_config>.size, 136)
        XCTAssertEqual(configSizeV06, 120)
        XCTAssertEqual(MemoryLayout<burst_attention_config>.offset(of: \burst_attention_config.compute), configSizeV06)
        let room = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 8)
        defer { room.deallocate() }
        let config = room.assumingMemoryBound(to: burst_attention_config.self)
        room.initializeMemory(as: UInt8.self, repeating: 0xAB, count: 256)
        _burst_attention_config_init(config)
        XCTAssertEqual(Int(config.pointee.struct_size), configSizeV06)
        XCTAssertEqual(room.load(fromByteOffset: configSizeV06, as: UInt8.self), 0xAB, "the unsized init wrote past the 0.6 struct")
        room.initializeMemory(as: UInt8.self, repeating: 0xAB, count: 256)
        XCTAssertEqual(_burst_attention_config_init_sized(config, configSizeV06), BURST_OK)
        XCTAssertEqual(room.load(fromByteOffset: configSizeV06, as: UInt8.self), 0xAB)
        for size in [configSizeV06 - 8, configSizeV06 + 4, 127, 132] {
            room.initializeMemory(as: UInt8.self, repeating: 0xAB, count: 256)
            XCTAssertEqual(_burst_attention_config_init_sized(config, size), BURST_ERROR_VERSION, "size \(size)")
            XCTAssertEqual(room.load(as: UInt8.self), 0xAB)
        }

        // The 0.7 size (128: it ends before sinks) is accepted and written exactly.
        room.initializeMemory(as: UInt8.self, repeating: 0xAB, count: 256)
        XCTAssertEqual(_burst_attention_config_init_sized(config, configSizeV07), BURST_OK)
        XCTAssertEqual(configSizeV07, 128)
        XCTAssertEqual(room.load(fromByteOffset: configSizeV07, as: UInt8.self), 0xAB, "init wrote past the 0.7 struct")

        // readConfig: a 0.6-sized config ignores what lies past it (compute
        // = 3 there is another object's memory); a 0.7-sized one reads
        // softcap (its reserved0) but not sinks; a newer tail must be 0.
        room.initializeMemory(as: UInt8.self, repeating: 0, count: 256)
        XCTAssertEqual(_burst_attention_config_init_sized(config, 136), BURST_OK)
        config.pointee.batch = 1; config.pointee.seq_len_local = 3; config.pointee.num_heads_q = 1
        config.pointee.num_heads_kv = 1; config.pointee.head_dim = 4; config.pointee.dtype = Int32(BURST_DTYPE_BF16)
        config.pointee.compute = 3
        config.pointee.struct_size = UInt32(configSizeV06)
        guard case .success(let old) = readConfig(config) else { return XCTFail("a 0.6-sized config must be read") }
        XCTAssertEqual(old.compute, 0)
        XCTAssertEqual(old.products, .bf16, "DEFAULT with bf16 storage")
        config.pointee.struct_size = UInt32(configSizeV07)
        guard case .success(let bad) = readConfig(config) else { return XCTFail("compute is read, then validated") }
        XCTAssertThrowsError(try bad.validate())
        config.pointee.compute = Int32(BURST_COMPUTE_EXACT)
        guard case .success(let exact) = readConfig(config) else { return XCTFail("a 0.7 config") }
        XCTAssertEqual(exact.products, .exact)
        config.pointee.softcap = 30
        var sinks: [Float] = [0.5]
        sinks.withUnsafeBufferPointer { config.pointee.sinks = $0.baseAddress }
        guard case .success(let v07) = readConfig(config) else { return XCTFail("a 0.7 config with softcap") }
        XCTAssertEqual(v07.softcap, 30)
        XCTAssertNil(v07.sinks, "sinks lie past the 0.7 struct")
        config.pointee.struct_size = 136
        guard case .success(let v08) = readConfig(config) else { return XCTFail("a 0.8 config with sinks") }
        XCTAssertEqual(v08.sinks, [0.5], "copied")
        sinks[0] = 2
        XCTAssertEqual(v08.sinks, [0.5])
        config.pointee.sinks = nil
        config.pointee.struct_size = 144
        XCTAssertNotNil(try? readConfig(config).get(), "a newer header's zero tail")
        room.storeBytes(of: 1, toByteOffset: 143, as: UInt8.self)
        guard case .failure(let tail) = readConfig(config) else { return XCTFail("a non-zero tail must fail") }
        XCTAssertEqual(tail.status, .version)
        config.pointee.struct_size = 124
        guard case .failure(let between) = readConfig(config) else { return XCTFail("124 bytes is no released size") }
        XCTAssertEqual(between.status, .version)
    }

    /// burst_build_info names the bf16 products' path.
    func testBuildInfoNamesTheBF16Path() {
        let info = String(cString: _burst_build_info())
        XCTAssertTrue(info.contains("; bf16_products \(LocalAttention.bf16ProductPath);"), info)
        XCTAssertTrue(["avx512_bf16", "emulated"].contains(LocalAttention.bf16ProductPath))
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
