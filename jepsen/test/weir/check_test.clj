(ns weir.check-test
  (:require [clojure.test :refer [deftest is testing]]
            [weir.check :as c]))

(def acked
  [{:process 1 :partition 0 :offset 0 :value "a"}
   {:process 1 :partition 0 :offset 1 :value "b"}
   {:process 2 :partition 1 :offset 0 :value "c"}])

(deftest a-complete-ordered-read-is-valid
  (let [r (c/check acked {0 [[0 "a"] [1 "b"]] 1 [[0 "c"]]})]
    (is (:valid? r))
    (is (= 3 (:acked r) (:read r)))))

(deftest each-anomaly-is-found
  (testing "lost: acknowledged, never read"
    (let [r (c/check acked {0 [[0 "a"]] 1 [[0 "c"]]})]
      (is (not (:valid? r)))
      (is (= ["b"] (map :value (:lost r))))))
  (testing "duplicated: one value at two offsets"
    (let [r (c/check acked {0 [[0 "a"] [1 "b"] [2 "a"]] 1 [[0 "c"]]})]
      (is (= [{:value "a" :at [[0 0] [0 2]]}] (:duplicated r)))))
  (testing "inconsistent: the ack said b at 0/1, the log says x"
    (let [r (c/check acked {0 [[0 "a"] [1 "x"]] 1 [[0 "c"]]})]
      (is (= [{:at [0 1] :acked "b" :read #{"x"}}] (:inconsistent r)))))
  (testing "nonmonotonic read: offsets go back within one read"
    (let [r (c/check acked {0 [[1 "b"] [0 "a"]] 1 [[0 "c"]]})]
      (is (= [{:partition 0 :offsets [1 0]}] (:nonmonotonic-read r)))))
  (testing "nonmonotonic send: a later ack at a lower offset"
    (let [swapped [(second acked) (first acked) (nth acked 2)]
          r       (c/check swapped {0 [[0 "a"] [1 "b"]] 1 [[0 "c"]]})]
      (is (= 1 (count (:nonmonotonic-send r))))
      (is (not (:valid? r))))))
