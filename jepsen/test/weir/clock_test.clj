(ns weir.clock-test
  (:require [clojure.test :refer [deftest is testing]]
            [weir.clock :as clock]))

(deftest steps-fall-in-the-three-ranges-either-way
  (let [rnd   (java.util.Random. 7)
        steps (repeatedly 3000 #(clock/step-seconds rnd))
        size  (fn [s] (Math/abs (long s)))]
    (is (every? #(or (<= 1 (size %) 120) (<= 600 (size %) 7799) (= clock/day-seconds (size %))) steps))
    (testing "every range is drawn, forwards and backwards"
      (is (some #(<= 1 % 120) steps))
      (is (some #(<= -120 % -1) steps))
      (is (some #(<= 600 % 7799) steps))
      (is (some #(<= -7799 % -600) steps))
      (is (some #{clock/day-seconds} steps))
      (is (some #{(- clock/day-seconds)} steps)))
    (is (not-any? zero? steps) "a step always moves the clock")))

(deftest the-timestamp-file-line-is-a-signed-offset-in-seconds
  (is (= "+0" (clock/faketime-line 0)))
  (is (= "+90" (clock/faketime-line 90)))
  (is (= "-86400" (clock/faketime-line -86400))))

(deftest a-skew-steps-one-node-of-the-test
  (let [rnd   (java.util.Random. 1)
        nodes ["n1" "n2" "n3"]
        ops   (repeatedly 300 #(clock/skew-op rnd nodes))]
    (is (every? #(= :skew-broker-clock (:f %)) ops))
    (is (every? #(= 1 (count (:value %))) ops))
    (is (= (set nodes) (set (mapcat (comp keys :value) ops))) "every node is stepped some time")
    (is (= :reset-broker-clock (:f clock/reset-op)))))
