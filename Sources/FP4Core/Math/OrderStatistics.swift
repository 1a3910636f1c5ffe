#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif

/// Exact order statistics of a float32 group by selection on order-preserving integer keys,
/// no full sort (OCC's thresholds use it): for thin tails a sampled candidate filter plus a
/// counting check (`selectTails`) or, on short rows, two small sorted tail buffers
/// (`selectSmallTails`); otherwise (or when the check fails) a radix select (`selectSerial`,
/// `selectParallel`). Results never depend on the thread count.
enum OrderStatistics {
    /// Groups at least this long are selected with the parallel radix select.
    static let parallelSelectMin = 1 << 16
    /// Candidate sets at most this long finish with an insertion sort.
    static let smallSort = 48
    /// Bins of the widest radix digit (11 bits).
    static let radixBins = 2048

    /// Order-preserving key: unsigned key order is float order (−0 sorts just below +0).
    @inline(__always)
    static func orderKey(_ bits: UInt32) -> UInt32 {
        bits ^ (UInt32(bitPattern: Int32(bitPattern: bits) >> 31) | 0x8000_0000)
    }

    @inline(__always)
    static func floatFromKey(_ k: UInt32) -> Float {
        Float(bitPattern: k & 0x8000_0000 != 0 ? k ^ 0x8000_0000 : ~k)
    }

    /// Top-11-bit buckets of keys of NaN/±inf: 0...3 (negative) and 2044...2047 (positive);
    /// every finite value lands in 4...2043.
    @inline(__always)
    static func hasNonFinite(_ hist: UnsafePointer<UInt32>) -> Bool {
        (hist[0] | hist[1] | hist[2] | hist[3] | hist[2044] | hist[2045] | hist[2046] | hist[2047]) != 0
    }


    /// Bit i set where lane i of a comparison result (−1 or 0) is set. The lanes narrowed to
    /// bytes; on x86-64 one pmovmskb (SSE2), elsewhere two 8-byte words and a multiply that
    /// gathers the low bit of each byte into the top byte.
    @inline(__always)
    static func laneMask16(_ lanes: SIMD16<Int32>) -> UInt64 {
        let bytes = SIMD16<UInt8>(truncatingIfNeeded: lanes)
        #if arch(x86_64)
        return UInt64(UInt32(bitPattern: _mm_movemask_epi8(unsafeBitCast(bytes, to: SIMD2<Int64>.self))))
        #else
        let w = unsafeBitCast(bytes, to: SIMD2<UInt64>.self)
        let lo8 = ((w[0] & 0x0101_0101_0101_0101) &* 0x0102_0408_1020_4080) >> 56
        let hi8 = ((w[1] & 0x0101_0101_0101_0101) &* 0x0102_0408_1020_4080) >> 56
        return lo8 | hi8 << 8
        #endif
    }

    // MARK: Tail select

    /// Outcome of `selectTails`: the two keys, a NaN/±inf in the group, or no decision (the
    /// caller then runs the radix select, which is exact on any input).
    enum TailResult {
        case keys(UInt32, UInt32)
        case nonFinite
        case undecided
    }

    /// Groups at least this long try `selectTails` first.
    static let tailSelectMin = 4096
    /// Values per filter block of `filterTails` (one 64-bit hit mask each).
    static let tailBlock = 64

    /// Signed key: Int32 order is float order (−0 just below +0, NaN/±inf beyond every finite
    /// value); `UInt32(bitPattern: s) ^ 0x8000_0000` is `orderKey`.
    @inline(__always)
    static func signedKey(_ b: Int32) -> Int32 { b ^ ((b &>> 31) & 0x7FFF_FFFF) }

    /// Keys at ranks ra ≤ rb of x[0..<n] when both lie in thin tails (the OCC case: α near 1).
    ///
    /// A deterministic stratified sample of the group gives keys tLo < tHi that should sit a
    /// little inside the two tails. One vectorized pass collects every key ≤ tLo (the set L, a
    /// prefix of the sorted group) and every key ≥ tHi (H, a suffix); a counting check then
    /// proves the answer lies there: sorted[ra] is L's ra-th key when ra < |L|, and sorted[rb]
    /// is H's (rb − (n − |H|))-th key when rb ≥ n − |H|. The ranks are selected exactly within
    /// L and H. When the sample guessed wrong (a check fails, or a candidate buffer would
    /// overflow) the result is `.undecided`, never a wrong key. With finite thresholds every
    /// NaN/±inf is a candidate, so scanning the candidates finds them all. The candidate sets
    /// (as sets) do not depend on the chunking, so neither does the result.
    static func selectTails(_ x: UnsafePointer<Float>, _ n: Int, _ ra: Int, _ rb: Int) -> TailResult {
        // Only thin tails (at most 1/32 of the group each), so the candidates stay few.
        guard n >= tailSelectMin, (ra + 1) * 32 <= n, (n - rb) * 32 <= n, ra <= rb else { return .undecided }
        // Sample: a run of 8 consecutive values from each of `runs` strata, at a hashed offset
        // (no stride aliasing with the columns of a row-major tensor; one cache line per run).
        let runs = Swift.min(1024, n / 256), m = 8 * runs
        let w = n / runs
        let sample = UnsafeMutablePointer<UInt32>.allocate(capacity: m)
        let hist = UnsafeMutablePointer<UInt32>.allocate(capacity: radixBins)
        defer { sample.deallocate(); hist.deallocate() }
        for r in 0..<runs {
            var h = UInt32(truncatingIfNeeded: r) &* 0x9E37_79B9
            h ^= h >> 15
            h = h &* 0x85EB_CA6B
            h ^= h >> 13
            let start = r &* w &+ Int(truncatingIfNeeded: (UInt64(h) &* UInt64(w - 7)) >> 32)
            // One vector load and store per run: short iterations keep many misses in flight.
            let b = UnsafeRawPointer(x + start).loadUnaligned(as: SIMD8<Int32>.self)
            let k = b ^ ((b &>> 31) | SIMD8<Int32>(repeating: Int32.min))
            UnsafeMutableRawPointer(sample + 8 &* r).storeBytes(of: k, as: SIMD8<Int32>.self)
        }
        // Sample ranks: expected count below the target rank plus a margin of ~3.5 standard
        // deviations, so a miss (which only costs time) is rare on data that is not adversarial.
        let eLo = Double(ra + 1) * Double(m) / Double(n)
        let eHi = Double(n - rb) * Double(m) / Double(n)
        let kLo = Int(eLo + 3.5 * eLo.squareRoot() + 3)
        let kHi = m - 1 - Int(eHi + 3.5 * eHi.squareRoot() + 3)
        guard kLo < kHi, kLo < m, kHi >= 0 else { return .undecided }
        let (sLo, sHi) = selectKeys(sample, m, kLo, kHi, level: 0, hist: hist, histReady: false)
        // Thresholds must be finite (then NaN/±inf lie strictly outside) and leave L, H disjoint.
        guard sLo < sHi, sLo >= 0x0080_0000, sHi < 0xFF80_0000 else { return .undecided }
        let tLo = Int32(bitPattern: sLo ^ 0x8000_0000), tHi = Int32(bitPattern: sHi ^ 0x8000_0000)

        // Candidate room per chunk: twice the share the sample predicts, plus a block of slack.
        let fLo = Double(kLo + 1) / Double(m), fHi = Double(m - kHi) / Double(m)
        let grain = Swift.min(Parallel.grain(count: n, minItems: 1 << 15), 1 << 28)
        let chunks = (n + grain - 1) / grain
        let capLo = Int(2 * fLo * Double(grain)) + 2 * tailBlock + 1
        let capHi = Int(2 * fHi * Double(grain)) + 2 * tailBlock + 1
        let bufLo = UnsafeMutablePointer<UInt32>.allocate(capacity: chunks * capLo)
        let bufHi = UnsafeMutablePointer<UInt32>.allocate(capacity: chunks * capHi)
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: 2 * chunks)
        defer { bufLo.deallocate(); bufHi.deallocate(); counts.deallocate() }
        Parallel.forChunks(count: n, grain: grain) { range in
            let c = range.lowerBound / grain
            let (pl, ph) = filterTails(x + range.lowerBound, range.count, tLo, tHi,
                                       bufLo + c * capLo, capLo, bufHi + c * capHi, capHi)
            counts[2 * c] = pl
            counts[2 * c + 1] = ph
        }
        // Close up the runs (a forward copy is safe: run c starts at or after its new place).
        var cl = 0, ch = 0
        for c in 0..<chunks {
            let pl = counts[2 * c], ph = counts[2 * c + 1]
            if pl < 0 || ph < 0 { return .undecided }  // a chunk overflowed its room
            if c > 0 {
                for i in 0..<pl { bufLo[cl + i] = bufLo[c * capLo + i] }
                for i in 0..<ph { bufHi[ch + i] = bufHi[c * capHi + i] }
            }
            cl += pl
            ch += ph
        }
        // NaN/±inf: keys below 0x0080_0000 or from 0xFF80_0000 up; all of them are candidates.
        var bad: UInt32 = 0
        for i in 0..<cl { bad |= (bufLo[i] < 0x0080_0000 ? 1 : 0) }
        for i in 0..<ch { bad |= (bufHi[i] >= 0xFF80_0000 ? 1 : 0) }
        if bad != 0 { return .nonFinite }
        // The counting check: the ranks must fall inside L and H.
        guard ra < cl, rb >= n - ch else { return .undecided }
        let ka = selectKeys(bufLo, cl, ra, ra, level: 0, hist: hist, histReady: false).0
        let kb = selectKeys(bufHi, ch, rb - (n - ch), rb - (n - ch), level: 0, hist: hist, histReady: false).0
        return .keys(ka, kb)
    }

    /// Appends the order keys of x[0..<n] with signed key ≤ tLo to lo and ≥ tHi to hi (tLo <
    /// tHi), in order; returns the counts, or (−1, −1) when a buffer would pass its capacity.
    /// Blocks of `tailBlock` values are compared as vectors into one bit mask per block, then
    /// only its set bits are visited (candidates are a few percent of the values); each visit
    /// writes to both buffers and advances one cursor, so it has no data-dependent branch.
    static func filterTails(_ x: UnsafePointer<Float>, _ n: Int, _ tLo: Int32, _ tHi: Int32,
                            _ lo: UnsafeMutablePointer<UInt32>, _ capLo: Int,
                            _ hi: UnsafeMutablePointer<UInt32>, _ capHi: Int) -> (Int, Int) {
        typealias V = SIMD16<Int32>
        let vLo = V(repeating: tLo), vHi = V(repeating: tHi), m7 = V(repeating: 0x7FFF_FFFF)
        let raw = UnsafeRawPointer(x)
        var pl = 0, ph = 0, i = 0
        // 16 values → 16 bits (`laneMask16`).
        @inline(__always) func hits(_ at: Int) -> UInt64 {
            let b = raw.loadUnaligned(fromByteOffset: at * 4, as: V.self)
            let s = b ^ ((b &>> 31) & m7)
            let lanes = (s .<= vLo)._storage | (s .>= vHi)._storage
            return laneMask16(lanes)
        }
        while i + tailBlock <= n {
            var m = hits(i) | hits(i + 16) << 16 | hits(i + 32) << 32 | hits(i + 48) << 48
            if m != 0 {
                if pl + tailBlock > capLo || ph + tailBlock > capHi { return (-1, -1) }
                repeat {
                    let bits = x[i + m.trailingZeroBitCount].bitPattern
                    let k = orderKey(bits)
                    let isLo = signedKey(Int32(bitPattern: bits)) <= tLo ? 1 : 0
                    lo[pl] = k
                    hi[ph] = k
                    pl &+= isLo
                    ph &+= 1 &- isLo
                    m &= m &- 1
                } while m != 0
            }
            i += tailBlock
        }
        if i < n {
            if pl + tailBlock > capLo || ph + tailBlock > capHi { return (-1, -1) }
            for j in i..<n {
                let bits = x[j].bitPattern
                let sk = signedKey(Int32(bitPattern: bits))
                let k = orderKey(bits)
                lo[pl] = k
                hi[ph] = k
                pl &+= sk <= tLo ? 1 : 0
                ph &+= sk >= tHi ? 1 : 0
            }
        }
        return (pl, ph)
    }

    /// Keys at ranks ra ≤ rb of x[0..<n] (n > 0), on one thread; nil if x holds NaN/±inf.
    /// `keys` has room for n, `hist` for `radixBins`.
    static func selectSerial(_ x: UnsafePointer<Float>, _ n: Int, _ ra: Int, _ rb: Int,
                             keys: UnsafeMutablePointer<UInt32>, hist: UnsafeMutablePointer<UInt32>) -> (UInt32, UInt32)? {
        if n <= smallSort {
            var bad: UInt32 = 0
            for i in 0..<n {
                let b = x[i].bitPattern
                bad |= ((b & 0x7FFF_FFFF) &+ 0x0080_0000) >> 31  // |x| ≥ inf
                keys[i] = orderKey(b)
            }
            if bad != 0 { return nil }
            insertionSort(keys, n)
            return (keys[ra], keys[rb])
        }
        let k1 = ra + 1, k2 = n - rb
        if k1 <= tailKeep && k2 <= tailKeep && k1 + k2 <= n {
            return selectSmallTails(x, n, k1, k2, keys: keys)
        }
        hist.update(repeating: 0, count: radixBins)
        for i in 0..<n {
            let k = orderKey(x[i].bitPattern)
            keys[i] = k
            hist[Int(k >> 21)] &+= 1
        }
        if hasNonFinite(hist) { return nil }
        return selectKeys(keys, n, ra, rb, level: 0, hist: hist, histReady: true)
    }

    /// `selectSerial` keeps the tails in sorted buffers when each holds at most this many keys.
    static let tailKeep = 8

    /// The k1-th smallest and k2-th largest keys of x[0..<n] (1 ≤ k1, k2; k1 + k2 ≤ n): the
    /// ranks k1 − 1 and n − k2. Two sorted buffers in `keys` hold the k1 smallest and the k2
    /// largest keys seen so far (each value is offered to both); a value enters only when it
    /// beats a buffer's bound, rare on most data, so that branch predicts well. This avoids
    /// the radix histogram's clearing and scanning of 2048 bins on short rows, and stays exact
    /// (if slower) on any order of the input. nil if x holds NaN/±inf.
    @inline(never)
    static func selectSmallTails(_ x: UnsafePointer<Float>, _ n: Int, _ k1: Int, _ k2: Int,
                                 keys: UnsafeMutablePointer<UInt32>) -> (UInt32, UInt32)? {
        var bad: UInt32 = 0
        for i in 0..<n { bad |= ((x[i].bitPattern & 0x7FFF_FFFF) &+ 0x0080_0000) >> 31 }  // |x| ≥ inf
        if bad != 0 { return nil }
        // low: the k1 smallest keys, ascending. high: the k2 largest as ~key, ascending.
        let low = keys, high = keys + k1
        for i in 0..<k1 { low[i] = orderKey(x[i].bitPattern) }
        insertionSort(low, k1)
        for i in 0..<k2 { high[i] = ~orderKey(x[i].bitPattern) }
        insertionSort(high, k2)
        var lowMax = low[k1 - 1], highMin = ~high[k2 - 1]
        @inline(__always) func offerLow(_ k: UInt32) {
            if k < lowMax { lowMax = insertSorted(low, k1, k) }
        }
        @inline(__always) func offerHigh(_ k: UInt32) {
            if k > highMin { highMin = ~insertSorted(high, k2, ~k) }
        }
        let both = Swift.max(k1, k2)
        for i in k1..<both { offerLow(orderKey(x[i].bitPattern)) }
        for i in k2..<both { offerHigh(orderKey(x[i].bitPattern)) }
        // 16 values at a time: one vector test against both bounds (signed keys), and the
        // scalar offers only for a block holding a value that beats one.
        typealias V = SIMD16<Int32>
        let m7 = V(repeating: 0x7FFF_FFFF)
        let raw = UnsafeRawPointer(x)
        var i = both
        while i + 16 <= n {
            let b = raw.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            let s = b ^ ((b &>> 31) & m7)
            let vl = V(repeating: Int32(bitPattern: lowMax ^ 0x8000_0000))
            let vh = V(repeating: Int32(bitPattern: highMin ^ 0x8000_0000))
            if any((s .< vl) .| (s .> vh)) {
                for j in i..<(i + 16) {
                    let k = orderKey(x[j].bitPattern)
                    offerLow(k)
                    offerHigh(k)
                }
            }
            i += 16
        }
        while i < n {
            let k = orderKey(x[i].bitPattern)
            offerLow(k)
            offerHigh(k)
            i += 1
        }
        return (lowMax, highMin)
    }

    /// Inserts k into the ascending a[0..<count], dropping the largest; k < a[count − 1].
    /// Returns the new a[count − 1].
    @inline(__always)
    static func insertSorted(_ a: UnsafeMutablePointer<UInt32>, _ count: Int, _ k: UInt32) -> UInt32 {
        var j = count - 1
        while j > 0 && a[j - 1] > k {
            a[j] = a[j - 1]
            j -= 1
        }
        a[j] = k
        return a[count - 1]
    }

    /// Keys at ranks ra ≤ rb of x[0..<n] (n large), with the top-digit histogram and the
    /// candidate gather spread over the workers; nil if x holds NaN/±inf.
    static func selectParallel(_ x: UnsafePointer<Float>, _ n: Int, _ ra: Int, _ rb: Int) -> (UInt32, UInt32)? {
        let grain = Swift.min(Parallel.grain(count: n, minItems: 1 << 15), 1 << 30)
        let chunks = (n + grain - 1) / grain
        let hists = UnsafeMutablePointer<UInt32>.allocate(capacity: chunks * radixBins)
        defer { hists.deallocate() }
        // Pass 1: per-chunk histograms of the top 11 key bits.
        Parallel.forChunks(count: n, grain: grain) { range in
            let h = hists + (range.lowerBound / grain) * radixBins
            h.update(repeating: 0, count: radixBins)
            histogramTop(x + range.lowerBound, range.count, h)
        }
        // Merge in chunk order; locate the target buckets.
        let total = UnsafeMutablePointer<UInt32>.allocate(capacity: radixBins)
        defer { total.deallocate() }
        var counts = [Int](repeating: 0, count: radixBins)
        for c in 0..<chunks {
            let h = hists + c * radixBins
            for b in 0..<radixBins { counts[b] += Int(h[b]) }
        }
        for b in 0..<radixBins { total[b] = counts[b] > 0 ? 1 : 0 }
        if hasNonFinite(total) { return nil }
        var cum = 0, ba = -1, bb = -1, baseA = 0, baseB = 0
        for b in 0..<radixBins {
            let c = counts[b]
            if ba < 0 && ra < cum + c { ba = b; baseA = cum }
            if rb < cum + c { bb = b; baseB = cum; break }
            cum += c
        }
        // Pass 2: gather the candidates of the target buckets, branch-free. Chunk c writes from
        // offset off[c] + c: every element is stored and the cursor advances only on a match,
        // so each chunk needs one spare slot after its run. The runs are closed up afterwards.
        var offA = [Int](repeating: 0, count: chunks + 1), offB = [Int](repeating: 0, count: chunks + 1)
        for c in 0..<chunks {
            offA[c + 1] = offA[c] + Int(hists[c * radixBins + ba])
            offB[c + 1] = offB[c] + (bb != ba ? Int(hists[c * radixBins + bb]) : 0)
        }
        let countA = offA[chunks], countB = offB[chunks]
        let candA = UnsafeMutablePointer<UInt32>.allocate(capacity: countA + chunks)
        let candB = UnsafeMutablePointer<UInt32>.allocate(capacity: countB + chunks)
        defer { candA.deallocate(); candB.deallocate() }
        let ua = UInt32(ba), ub = bb != ba ? UInt32(bb) : 0xFFFF  // 0xFFFF: no digit matches
        offA.withUnsafeBufferPointer { oab in
            offB.withUnsafeBufferPointer { obb in
                let oap = oab.baseAddress!, obp = obb.baseAddress!
                Parallel.forChunks(count: n, grain: grain) { range in
                    let c = range.lowerBound / grain
                    gatherTop(x + range.lowerBound, range.count, ua, candA + oap[c] + c, ub, candB + obp[c] + c)
                }
                // Close the gaps: run c moves left by c slots (a forward copy is safe).
                for c in 1..<Swift.max(chunks, 1) {
                    for i in oap[c]..<oap[c + 1] { candA[i] = candA[i + c] }
                    for i in obp[c]..<obp[c + 1] { candB[i] = candB[i + c] }
                }
            }
        }
        // Refine the candidates (they share the top 11 bits) on one thread.
        if ba == bb {
            return selectKeys(candA, countA, ra - baseA, rb - baseA, level: 1, hist: total, histReady: false)
        }
        let ka = selectKeys(candA, countA, ra - baseA, ra - baseA, level: 1, hist: total, histReady: false).0
        let kb = selectKeys(candB, countB, rb - baseB, rb - baseB, level: 1, hist: total, histReady: false).0
        return (ka, kb)
    }

    /// Copies the keys of x[0..<n] whose top 11 bits are ua to a, and those with ub to b, in
    /// order. Branch-free: a and b each need one slot beyond their match count.
    static func gatherTop(_ x: UnsafePointer<Float>, _ n: Int, _ ua: UInt32, _ a: UnsafeMutablePointer<UInt32>,
                          _ ub: UInt32, _ b: UnsafeMutablePointer<UInt32>) {
        var pa = 0, pb = 0
        for i in 0..<n {
            let k = orderKey(x[i].bitPattern)
            let d = k >> 21
            a[pa] = k
            b[pb] = k
            // (d ^ u) − 1 has bit 31 set exactly when d == u (both below 2^16).
            pa &+= Int(((d ^ ua) &- 1) >> 31)
            pb &+= Int(((d ^ ub) &- 1) >> 31)
        }
    }

    /// Histogram of the top 11 key bits of x[0..<n] into h (which the caller zeroed). Four
    /// interleaved sub-histograms keep runs of equal buckets off one store-to-load chain.
    static func histogramTop(_ x: UnsafePointer<Float>, _ n: Int, _ h: UnsafeMutablePointer<UInt32>) {
        let sub = UnsafeMutablePointer<UInt32>.allocate(capacity: 4 * radixBins)
        defer { sub.deallocate() }
        sub.update(repeating: 0, count: 4 * radixBins)
        let h0 = sub, h1 = sub + radixBins, h2 = sub + 2 * radixBins, h3 = sub + 3 * radixBins
        var i = 0
        while i + 4 <= n {
            h0[Int(orderKey(x[i].bitPattern) >> 21)] &+= 1
            h1[Int(orderKey(x[i + 1].bitPattern) >> 21)] &+= 1
            h2[Int(orderKey(x[i + 2].bitPattern) >> 21)] &+= 1
            h3[Int(orderKey(x[i + 3].bitPattern) >> 21)] &+= 1
            i += 4
        }
        while i < n {
            h0[Int(orderKey(x[i].bitPattern) >> 21)] &+= 1
            i += 1
        }
        for b in 0..<radixBins { h[b] = h0[b] &+ h1[b] &+ h2[b] &+ h3[b] }
    }

    /// Keys at ranks ra ≤ rb of a[0..<n], which share all bits above the digit of `level`
    /// (0: bits 21–31, 1: bits 10–20, 2: bits 0–9). Reorders and shrinks `a` in place.
    /// `hist` has room for `radixBins`; with `histReady` it already holds this level's histogram.
    static func selectKeys(_ a: UnsafeMutablePointer<UInt32>, _ count: Int, _ rankA: Int, _ rankB: Int,
                           level startLevel: Int, hist: UnsafeMutablePointer<UInt32>, histReady: Bool) -> (UInt32, UInt32) {
        var n = count, ra = rankA, rb = rankB, level = startLevel, ready = histReady
        while true {
            if n <= smallSort {
                insertionSort(a, n)
                return (a[ra], a[rb])
            }
            let shift: UInt32 = level == 0 ? 21 : (level == 1 ? 10 : 0)
            let mask: UInt32 = level == 2 ? 0x3FF : 0x7FF
            let bins = Int(mask) + 1
            if !ready {
                hist.update(repeating: 0, count: bins)
                for i in 0..<n { hist[Int((a[i] >> shift) & mask)] &+= 1 }
            }
            ready = false
            var cum = 0, ba = -1, bb = -1, baseA = 0, baseB = 0
            for b in 0..<bins {
                let c = Int(hist[b])
                if ba < 0 && ra < cum + c { ba = b; baseA = cum }
                if rb < cum + c { bb = b; baseB = cum; break }
                cum += c
            }
            if level == 2 {
                // The last digit fixes the key: every key shares the bits above it.
                let high = a[0] & ~mask
                return (high | UInt32(ba), high | UInt32(bb))
            }
            let ua = UInt32(ba), ub = UInt32(bb)
            let ma = Int(hist[ba])
            if ba == bb {
                if ma != n {
                    var j = 0
                    for i in 0..<n {
                        let k = a[i]
                        a[j] = k
                        j &+= ((k >> shift) & mask) == ua ? 1 : 0
                    }
                }
                n = ma
                ra -= baseA
                rb -= baseA
                level += 1
                continue
            }
            // The ranks part here: bucket ba stays in a, bucket bb moves to its own buffer.
            let mb = Int(hist[bb])
            let other = UnsafeMutablePointer<UInt32>.allocate(capacity: mb)
            defer { other.deallocate() }
            var j = 0, l = 0
            for i in 0..<n {
                let k = a[i]
                let d = (k >> shift) & mask
                if d == ub {
                    other[l] = k
                    l += 1
                }
                a[j] = k
                j &+= d == ua ? 1 : 0
            }
            let ka = selectKeys(a, ma, ra - baseA, ra - baseA, level: level + 1, hist: hist, histReady: false).0
            let kb = selectKeys(other, mb, rb - baseB, rb - baseB, level: level + 1, hist: hist, histReady: false).0
            return (ka, kb)
        }
    }

    static func insertionSort(_ a: UnsafeMutablePointer<UInt32>, _ n: Int) {
        guard n > 1 else { return }
        for i in 1..<n {
            let k = a[i]
            var j = i
            while j > 0 && a[j - 1] > k {
                a[j] = a[j - 1]
                j -= 1
            }
            a[j] = k
        }
    }
}
